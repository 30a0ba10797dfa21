"""The training worker: a separate process that takes one queued run and executes it.

The server starts it (assistant/scheduler.py) so training never runs in the server's event
loop or threads; one process per run means a crash or a leak cannot outlive the run, and the
server's chat stays responsive because the worker uses `training.threads` torch threads.

One run at a time holds across server restarts: the worker takes the training lock
(assistant/run_lock.py) before claiming a run and keeps it until it exits. Started by a
server (--parent-pid), it fails its run and exits when that server dies, so a kill -9 of the
server leaves no orphan training on. The configuration comes on stdin, without keys:

    python -m assistant.worker --config-stdin < config.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path

from adapters.records import RunOutcome, StepRecord
from assistant.config import Config, from_dict, load_config
from assistant.logs import configure_logging
from assistant.run_lock import RunLock
from assistant.training_settings import run_settings
from feedback_store import runs
from feedback_store.db import connect, is_busy, open_db, retrying, transaction
from feedback_store.errors import TrainingError

log = logging.getLogger("assistant.worker")
LOG_LINES = 200
PROGRESS_EVERY = 2.0     # seconds between progress writes to the store
PARENT_POLL = 0.5        # seconds between checks that the server is still alive
TRACEBACK_LINES = 12     # of the failure's traceback, kept in the run's log
# The final status is written once: by the run, or by the watchdog when the server died.
_finishing = threading.Lock()


def _warm_start_note(record: StepRecord) -> str:
    """What the KL leash did to the DPO warm start at this step, in words ("" if nothing)."""
    if record.get("warm_start_reverted"):
        return " - the warm start went over training.target_kl: undone, RL goes on"
    kept = record.get("warm_start_kept")
    if kept is not None:
        return (f" - the warm start went over training.target_kl: scaled back to {kept:.2f}"
                " of its change, RL goes on")
    return ""


class RunLog:
    """Keeps the last lines of a run's log and its step metrics, persisted now and then."""

    def __init__(self, db, run_id: int, echo: bool = True) -> None:
        self.db, self.run_id, self.echo = db, run_id, echo
        self.lines: deque[str] = deque(maxlen=LOG_LINES)
        self.steps: list[StepRecord] = []
        self.saved = 0.0

    def __call__(self, line: str) -> None:
        self.lines.append(f"{time.strftime('%H:%M:%S')} {line}")
        if self.echo:
            log.info(line)
        self.save()

    def step(self, record: StepRecord) -> None:
        self.steps.append(record)
        self(f"step {record['step']}: reward {record['reward_mean']:.3f} "
             f"kl {record['kl']:.4f} len {record['completion_len']:.0f} "
             f"loss {record['loss']:.4f}"
             + (" - over training.target_kl: RL stops, keeping the previous weights"
                if record.get("kl_stop") else "")
             + _warm_start_note(record))

    @property
    def tail(self) -> str:
        return "\n".join(self.lines)

    def save(self, force: bool = False) -> None:
        """Persist progress now and then; a busy database only delays it (never fails the
        run: the final status is written with retries)."""
        if force or time.time() - self.saved > PROGRESS_EVERY:
            try:
                transaction(self.db, runs.update_progress, self.run_id, {"steps": self.steps},
                            self.tail)
            except Exception as exc:
                if not is_busy(exc):
                    raise
                log.warning("progress not saved (%s); retrying later", exc)
                return
            self.saved = time.time()


def execute(config: Config, run: dict, db, echo: bool = True,
            progress: Callable[[StepRecord], None] | None = None) -> dict:
    """Run one claimed run to a final status; never raises (the status says what happened)."""
    import torch

    from adapters.base_model import load_base
    from adapters.jobs import execute_run

    log = RunLog(db, run["id"], echo)

    def on_step(record: StepRecord) -> None:
        log.step(record)
        if progress:
            progress(record)

    try:
        torch.set_num_threads(max(1, config.training.threads))
        base = load_base(config.model.path, config.cache_dir, config.model.device,
                         config.model.dtype)
        log(f"run {run['id']} for user {run['user_name']!r} started (pid {os.getpid()})")
        outcome = execute_run(db, base, config.adapters_dir, run, run_settings(config),
                              log, on_step)
    except Exception as exc:  # any failure ends the run as failed; the old adapter serves
        with _finishing:
            _fail(db, run, log, exc)
        return runs.get_run(db, run["id"])
    with _finishing:
        try:
            retrying(db, _finish_and_publish, run, outcome, log.tail)
        except Exception as exc:    # rolled back: nothing was published, the run says why
            _fail(db, run, log, exc)
    return runs.get_run(db, run["id"])


def _fail(db, run: dict, log: RunLog, exc: Exception) -> None:
    """Record the run as failed with the exception itself (its type and message) and the end
    of its traceback in the run's log, where the admin sees them."""
    lines = traceback.format_exc().rstrip().splitlines()
    log("failed:\n" + "\n".join(lines[-TRACEBACK_LINES:]))
    retrying(db, runs.finish_running, run["id"], "failed", {"steps": log.steps}, log.tail,
             f"{type(exc).__name__}: {exc}")


def _finish_and_publish(db, run: dict, outcome: RunOutcome, log_tail: str) -> None:
    """One transaction: the run's final status and what it publishes (its reward head and, if
    promoted, its adapter version). Killed before this commits, the run publishes nothing."""
    from adapters.jobs import publish

    # Only a run still `running` publishes (the Ray executor may have failed it meanwhile).
    if not runs.finish_running(db, run["id"], outcome["status"], dict(outcome["metrics"]), log_tail,
                               None, outcome["adapter_version"], outcome["events_used"]):
        raise RunAlreadyEnded(f"run {run['id']} was ended while it trained "
                              f"({runs.get_run(db, run['id'])['status']}): nothing published")
    publish(db, run, outcome)


class RunAlreadyEnded(TrainingError):
    """The run's status was set by someone else while it trained (its executor failed it)."""


def _fail_if_running(db, run_id: int, error: str) -> None:
    if runs.get_run(db, run_id)["status"] == "running":
        runs.finish(db, run_id, "failed", error=error)


def watch_parent(config: Config, run_id: int, parent_pid: int) -> threading.Thread:
    """Fail the run and exit as soon as the server that started this worker is gone."""
    def loop() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL)
        _finishing.acquire()      # never released: the process ends below
        try:
            db = connect(config.store_target)
            retrying(db, _fail_if_running, run_id,
                     f"the server (pid {parent_pid}) stopped while this run was training; "
                     "the previous adapter and reward head stay live")
        finally:
            os._exit(3)

    thread = threading.Thread(target=loop, name="parent-watch", daemon=True)
    thread.start()
    return thread


def keep_lease(config: Config, run_id: int) -> threading.Thread:
    """Renew the run's lease every third of [store] run_lease_seconds on a connection of its
    own, so a long step without log lines never looks like a dead worker."""
    seconds = config.store.run_lease_seconds

    def loop() -> None:
        db = connect(config.store_target)
        while True:
            time.sleep(seconds / 3)
            try:
                if not retrying(db, runs.renew_lease, run_id, os.getpid(), seconds):
                    return          # finished, or failed by someone who found it expired
            except Exception as exc:    # a store hiccup: the next beat tries again
                log.warning("run %s: lease not renewed (%s)", run_id, exc)

    thread = threading.Thread(target=loop, name="lease", daemon=True)
    thread.start()
    return thread


def _stop_on_sigterm() -> None:
    """SIGTERM (the server shutting down) fails the run with a clear error instead of
    leaving it `running`: the exception surfaces in the main thread, caught by execute()."""
    def handler(signum, frame):
        raise TrainingError("stopped by SIGTERM (the server is shutting down)")

    signal.signal(signal.SIGTERM, handler)


def read_config(args: argparse.Namespace) -> Config:
    if args.config_stdin:
        return from_dict(json.loads(sys.stdin.read()))
    if args.config_json:
        return from_dict(json.loads(Path(args.config_json).read_text()))
    return load_config()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="assistant.worker")
    p.add_argument("--config-stdin", action="store_true",
                   help="read the effective config (JSON, no keys) from stdin")
    p.add_argument("--config-json", help="read the effective config from this file")
    p.add_argument("--parent-pid", type=int, help="exit (failing the run) when it dies")
    args = p.parse_args(argv)
    os.umask(0o077)
    config = read_config(args)
    configure_logging(config.server.log_level)
    lock = RunLock(config.data_dir)
    if not lock.acquire():
        log.warning("another training worker (pid %s) holds %s; not starting a second run",
                    lock.holder(), lock.path)
        return 0
    try:
        _stop_on_sigterm()
        db = open_db(config.store_target)
        run = retrying(db, runs.claim_next, os.getpid(), config.store.run_lease_seconds,
                       exclusive=False)
        if run is None:
            log.info("no queued run")
            return 0
        keep_lease(config, run["id"])
        if args.parent_pid:
            watch_parent(config, run["id"], args.parent_pid)
        result = execute(config, run, db)
        log.info("run %s: %s", run["id"], result["status"])
        return 0
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
