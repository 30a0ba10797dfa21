"""Scheduled and on-demand training inside the server.

APScheduler's background scheduler wakes every `scheduler.interval_seconds`, queues a run for
each user with at least `training.min_new_events` new feedback events, and makes sure a
worker process is executing the queue. Runs go one at a time, each in its own process
(assistant/worker.py); this class only starts processes and watches them.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from assistant.config import Config, to_dict
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

    def start(self) -> None:
        """Fail runs orphaned by a dead process, resume the queue, start the timer."""
        failed = self.store.write_sync(runs.fail_orphans)
        if failed:
            log.warning("runs %s were running when their process died: marked failed", failed)
        if self.config.scheduler.enabled:
            self.scheduler = BackgroundScheduler(daemon=True)
            self.scheduler.add_job(self.tick, "interval",
                                   seconds=self.config.scheduler.interval_seconds,
                                   max_instances=1, coalesce=True)
            self.scheduler.start()
        self.kick()

    def tick(self) -> list[dict]:
        """Queue every due user, then make sure a worker runs."""
        queued = self.store.write_sync(runs.request_training, None, False,
                                       self.config.training.min_new_events, "scheduler")
        self.kick()
        return queued

    def kick(self) -> None:
        """Start a worker for the next queued run unless one is already running."""
        with self.lock:
            if self.stopping or (self.process and self.process.poll() is None):
                return
            if not self.store.write_sync(runs.has_queued):
                return
            self.process = self._spawn()
        threading.Thread(target=self._watch, args=(self.process,), daemon=True).start()

    def _spawn(self) -> subprocess.Popen:
        config_file = self.config.data_dir / "worker-config.json"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(json.dumps(to_dict(self.config)))
        logfile = (self.config.data_dir / "worker.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "assistant.worker", "--config-json", str(config_file)],
            cwd=ROOT, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _watch(self, process: subprocess.Popen) -> None:
        process.wait()
        self.store.write_sync(runs.fail_orphans)    # a crash mid-run leaves it 'running'
        self.kick()

    def busy(self) -> bool:
        return bool(self.process and self.process.poll() is None)

    def shutdown(self) -> None:
        self.stopping = True
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.busy():
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
