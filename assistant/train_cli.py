"""`assistant train [--user NAME] [--force]`: queue and run training in the foreground."""

from __future__ import annotations

import argparse
import os

from assistant.config import Config
from assistant.run_lock import RunLock
from feedback_store import runs
from feedback_store.db import open_db, transaction


def cmd_train(args: argparse.Namespace, config: Config) -> None:
    db = open_db(config.store_target)
    queued = transaction(db, runs.request_training, args.user, args.force,
                         config.training.min_new_events, "cli")
    if not queued:
        print(f"no user has {config.training.min_new_events} new feedback events "
              "(use --force to train anyone with feedback)")
    lock = RunLock(config.data_dir)
    if lock.held_elsewhere():
        print(f"a training worker (pid {lock.holder()}) is running; waiting for it to finish")
    with lock:                  # one run at a time, with the server's workers too
        _run_queue(config, db)
    db.close()


def _run_queue(config: Config, db) -> None:
    from tqdm import tqdm

    from assistant.worker import execute

    while (run := transaction(db, runs.claim_next, os.getpid())) is not None:
        with tqdm(total=config.training.steps, desc=f"run {run['id']} {run['user_name']}",
                  unit="step") as bar:
            result = execute(config, run, db, echo=False,
                             progress=lambda rec: bar.update(1) or bar.set_postfix(
                                 reward=f"{rec['reward_mean']:.3f}", kl=f"{rec['kl']:.3f}"))
        line = f"run {result['id']} ({result['user_name']}): {result['status']}"
        if result["adapter_version"]:
            line += f", now serving version {result['adapter_version']}"
        if result["error"]:
            line += f" - {result['error']}"
        print(line)
        decision = (result.get("metrics") or {}).get("decision")
        if decision:
            print(f"  gate: {decision}")


def add_parser(sub) -> None:
    cmd = sub.add_parser("train", help="train due users now, in the foreground")
    cmd.add_argument("--user", help="only this user (by name)")
    cmd.add_argument("--force", action="store_true", help="ignore training.min_new_events")
    cmd.set_defaults(func=cmd_train)
