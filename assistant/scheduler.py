"""Scheduled and on-demand training inside the server.

APScheduler's background scheduler wakes every `scheduler.interval_seconds`, queues a run for
each user with at least `training.min_new_events` new feedback events, and makes sure a
worker process is executing the queue. Runs go one at a time, each in its own process
(assistant/worker.py); this class only starts processes and watches them.

"One at a time" holds across restarts through the worker's OS lock (assistant/run_lock.py):
a worker left by a server that was killed still holds it, so no second worker starts until
it is gone (it notices its server died, fails its run and exits). The worker gets its
configuration on stdin, with every key removed: nothing secret is written to disk.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from assistant.config import Config, to_dict
from assistant.run_lock import RunLock
from feedback_store import runs
from feedback_store.db import Store

log = logging.getLogger("assistant.scheduler")
ROOT = Path(__file__).resolve().parent.parent


class TrainingScheduler:
    def __init__(self, config: Config, store: Store) -> None:
        self.config, self.store = config, store
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.scheduler: BackgroundScheduler | None = None
        self.stopping = False
        self.run_lock = RunLock(config.data_dir)
        self.waiting = False            # a thread waits for another process's worker to end

    def start(self) -> None:
        """Fail runs orphaned by a dead process, resume the queue, start the timer."""
        # Releases before 13 wrote the whole config, admin key included, to this file.
        (self.config.data_dir / "worker-config.json").unlink(missing_ok=True)
        self.fail_orphans()
        if self.config.scheduler.enabled:
            self.scheduler = BackgroundScheduler(daemon=True)
            self.scheduler.add_job(self.tick, "interval",
                                   seconds=self.config.scheduler.interval_seconds,
                                   max_instances=1, coalesce=True)
            self.scheduler.start()
        self.kick()

    def tick(self) -> list[dict]:
        """Fail runs whose worker is gone (a lease that ran out, on any host), queue every
        due user, then make sure a worker runs."""
        self.fail_orphans()
        queued = self.store.write_sync(runs.request_training, None, False,
                                       self.config.training.min_new_events, "scheduler")
        self.kick()
        return queued

    def fail_orphans(self) -> list[int]:
        """Runs left `running` by a worker that is gone become failed. Nobody holding the
        training lock means no worker is alive, whatever process now has a recorded pid."""
        failed = self.store.write_sync(runs.fail_orphans, self.run_lock.held_elsewhere())
        if failed:
            log.warning("runs %s were running when their process died: marked failed", failed)
        return failed

    def kick(self) -> None:
        """Start a worker for the next queued run unless one is already running (ours, or
        one left by a previous server process: then wait for it to end first)."""
        with self.lock:
            if self.stopping or (self.process and self.process.poll() is None):
                return
            if not self.store.write_sync(runs.has_queued):
                return
            if self.run_lock.held_elsewhere():
                if not self.waiting:
                    self.waiting = True
                    threading.Thread(target=self._wait_for_other, daemon=True).start()
                return
            self.process = self._spawn()
        threading.Thread(target=self._watch, args=(self.process,), daemon=True).start()

    def _wait_for_other(self) -> None:
        log.warning("a training worker from an earlier server (pid %s) is still running: "
                    "waiting for it before starting another", self.run_lock.holder())
        self.run_lock.wait_free()
        self.waiting = False
        self.fail_orphans()
        self.kick()

    def worker_config(self) -> str:
        """The effective config for the worker, as JSON with the admin key blanked (the
        worker needs none, and it must never be written anywhere)."""
        safe = dataclasses.replace(self.config,
                                   server=dataclasses.replace(self.config.server, admin_key=""))
        return json.dumps(to_dict(safe))

    def _spawn(self) -> subprocess.Popen:
        self.config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.config.data_dir / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     0o600)
        with os.fdopen(fd, "ab") as logfile:
            process = subprocess.Popen(
                [sys.executable, "-m", "assistant.worker", "--config-stdin",
                 "--parent-pid", str(os.getpid())],
                cwd=ROOT, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.PIPE)
        assert process.stdin is not None
        try:
            process.stdin.write(self.worker_config().encode())
            process.stdin.close()
        except BrokenPipeError:      # it died at once; _watch records and moves on
            log.error("the training worker exited before reading its configuration")
        return process

    def _watch(self, process: subprocess.Popen) -> None:
        process.wait()
        self.fail_orphans()     # a crash mid-run leaves it 'running'
        self.kick()

    def busy(self) -> bool:
        return bool(self.process and self.process.poll() is None)

    def shutdown(self) -> None:
        self.stopping = True
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def training_scheduler(config: Config, store: Store) -> TrainingScheduler:
    """The scheduler for [training] executor: worker processes here, or Ray tasks."""
    if config.training.executor == "ray":
        from assistant.ray_executor import RayTrainingScheduler

        return RayTrainingScheduler(config, store)
    return TrainingScheduler(config, store)
