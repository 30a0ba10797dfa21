"""Logging is configured once per process, so the project's log.info lines are seen; a
worker's failure lands on its run with the real exception."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from assistant.config import load_config, to_dict
from tests.conftest import ROOT

ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_the_worker_logs_info_lines_with_time_level_and_name(tmp_path):
    config = load_config(ROOT / "config.toml", env={"ASSISTANT_DATA_DIR": str(tmp_path)})
    path = tmp_path / "worker-config.json"
    path.write_text(json.dumps(to_dict(config)))
    out = subprocess.run([sys.executable, "-m", "assistant.worker", "--config-json", str(path)],
                         capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert " INFO assistant.worker: no queued run" in out.stderr


def test_the_cli_logs_the_projects_info_lines_and_no_library_chatter(tmp_path):
    """`assistant ...` configures logging before running its command (serve included)."""
    code = ("import logging, sys; from assistant import cli; "
            "cli.cmd_user_list = lambda args, config: ("
            "logging.getLogger('assistant.erase').info('seen'), "
            "logging.getLogger('adapters.jobs').debug('hidden'), "
            "logging.getLogger('httpx').info('library chatter')); "
            "sys.exit(cli.main(['user', 'list']))")
    env = {**ENV, "ASSISTANT_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert " INFO assistant.erase: seen" in out.stderr
    assert "hidden" not in out.stderr and "library chatter" not in out.stderr
    debug = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**env, "ASSISTANT_SERVER_LOG_LEVEL": "debug"}, cwd=ROOT,
                           timeout=120)
    assert " DEBUG adapters.jobs: hidden" in debug.stderr


def test_a_run_that_fails_while_publishing_records_the_real_error(tmp_path, monkeypatch):
    from adapters import base_model, jobs
    from assistant import worker
    from feedback_store import runs
    from feedback_store.db import open_db, transaction
    from feedback_store.users import create_user

    config = load_config(ROOT / "config.toml", env={"ASSISTANT_DATA_DIR": str(tmp_path),
                                                     "ASSISTANT_SAFETY_ENABLED": "false"})
    db = open_db(config.db_path)
    user, _ = transaction(db, create_user, "ada", False)
    transaction(db, runs.enqueue, user["id"], True, "test")
    run = transaction(db, runs.claim_next, os.getpid())
    monkeypatch.setattr(base_model, "load_base", lambda *a, **k: None)
    monkeypatch.setattr(jobs, "execute_run", lambda *a, **k: {
        "status": "succeeded", "metrics": {}, "adapter_version": 1, "events_used": 0})

    def publish(db, run, outcome):
        raise OSError("disk full while promoting version 1")

    monkeypatch.setattr(jobs, "publish", publish)
    result = worker.execute(config, run, db, echo=False)
    assert result["status"] == "failed" and result["adapter_version"] is None
    assert result["error"] == "OSError: disk full while promoting version 1"
    assert "disk full" in result["log_tail"]
    db.close()
