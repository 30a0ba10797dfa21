"""The training worker: a separate process that takes one queued run and executes it.

The server starts it (assistant/scheduler.py) so training never runs in the server's event
loop or threads; one process per run means a crash or a leak cannot outlive the run, and the
server's chat stays responsive because the worker uses `training.threads` torch threads.

    python -m assistant.worker --config-json data/worker-config.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections import deque
from pathlib import Path

from assistant.config import Config, from_dict, load_config
from assistant.training_settings import run_settings
from feedback_store import runs
from feedback_store.db import open_db, transaction

LOG_LINES = 200
PROGRESS_EVERY = 2.0     # seconds between progress writes to the store


class RunLog:
    """Keeps the last lines of a run's log and its step metrics, persisted now and then."""

    def __init__(self, db, run_id: int, echo: bool = True) -> None:
        self.db, self.run_id, self.echo = db, run_id, echo
        self.lines: deque[str] = deque(maxlen=LOG_LINES)
        self.steps: list[dict] = []
        self.saved = 0.0

    def __call__(self, line: str) -> None:
        self.lines.append(f"{time.strftime('%H:%M:%S')} {line}")
        if self.echo:
            print(line, flush=True)
        self.save()

    def step(self, record: dict) -> None:
        self.steps.append(record)
        self(f"step {record['step']}: reward {record['reward_mean']:.3f} "
             f"kl {record['kl']:.4f} len {record['completion_len']:.0f} "
             f"loss {record['loss']:.4f}"
             + (" - over training.target_kl: RL stops, keeping the previous weights"
                if record.get("kl_stop") else "")
             + (" - the warm start went over training.target_kl: undone, RL goes on"
                if record.get("warm_start_reverted") else ""))

    @property
    def tail(self) -> str:
        return "\n".join(self.lines)

    def save(self, force: bool = False) -> None:
        if force or time.time() - self.saved > PROGRESS_EVERY:
            transaction(self.db, runs.update_progress, self.run_id, {"steps": self.steps},
                        self.tail)
            self.saved = time.time()


def execute(config: Config, run: dict, db, echo: bool = True, progress=None) -> dict:
    """Run one claimed run to a final status; never raises (the status says what happened)."""
    import torch

    from adapters.base_model import load_base
    from adapters.jobs import execute_run

    log = RunLog(db, run["id"], echo)

    def on_step(record: dict) -> None:
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
        log(traceback.format_exc())
        transaction(db, runs.finish, run["id"], "failed", {"steps": log.steps}, log.tail,
                    f"{type(exc).__name__}: {exc}")
        return runs.get_run(db, run["id"])
    transaction(db, runs.finish, run["id"], outcome["status"], outcome["metrics"], log.tail,
                None, outcome["adapter_version"], outcome["events_used"])
    return runs.get_run(db, run["id"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="assistant.worker")
    p.add_argument("--config-json", help="effective config written by the server")
    args = p.parse_args(argv)
    config = (from_dict(json.loads(Path(args.config_json).read_text()))
              if args.config_json else load_config())
    db = open_db(config.db_path)
    run = transaction(db, runs.claim_next, os.getpid())
    if run is None:
        return 0
    result = execute(config, run, db)
    print(f"run {run['id']}: {result['status']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
