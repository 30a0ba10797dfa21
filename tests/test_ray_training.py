"""Training runs as Ray tasks ([training] executor = "ray") on a local Ray and the tiny model:
runs of several users in parallel, a worker killed mid-run, no run published twice."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from assistant.config import load_config
from feedback_store import runs
from feedback_store.db import transaction
from feedback_store.errors import ConfigError
from feedback_store.users import create_user
from tests import waiting
from tests.conftest import ROOT
from tests.test_training_flow import give_feedback, greedy, serve, train, wait

T = TypeVar("T")
RAY = {"ASSISTANT_TRAINING_EXECUTOR": "ray", "ASSISTANT_TRAINING_MAX_PARALLEL_RUNS": 2,
       "ASSISTANT_TRAINING_PROMOTE_MARGIN": -1e9, "ASSISTANT_TRAINING_KL_BUDGET": 1e9}
# A Ray worker's first task imports torch and transformers: a minute or more on a shared,
# loaded 2-core machine (load average 20+ while these tests were written).
SLOW = 900


def until(value: Callable[[], T | None], what: str, timeout: float = SLOW) -> T:
    return waiting.until(value, what, timeout)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting one takes seconds to a minute here)."""
    import ray

    from assistant.ray_executor import start_local_ray

    start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_server(tmp_path, tiny_dir, local_ray):
    """A server on the tiny model whose runs are Ray tasks, 2 at a time, gate always open."""
    server, thread, live = serve(tmp_path, tiny_dir, **RAY)
    yield live
    server.should_exit = True
    thread.join(timeout=10)


def get_run(live, run_id: int) -> dict:
    return httpx.get(f"{live.url}/admin/runs/{run_id}",
                     headers=live.headers(live.admin_key)).json()


def worker_pid(live, run_id: int) -> int | None:
    """The pid the run's Ray task recorded once it started training (not the server's)."""
    run = get_run(live, run_id)
    started = run["status"] == "running" and "started (pid" in (run["log_tail"] or "")
    return run["pid"] if started and run["pid"] != os.getpid() else None


def current_version(live, key: str) -> int | None:
    return httpx.get(f"{live.url}/api/me", headers=live.headers(key)).json()["current_version"]


def test_runs_of_several_users_in_parallel_each_promoted_for_its_user(ray_server):
    live = ray_server
    keys = {name: live.add_user(name) for name in ("ann", "ben", "cat")}
    for key in keys.values():
        give_feedback(live, key)
    queued = {name: train(live, name)["id"] for name in keys}
    # max_parallel_runs = 2: two runs train at once, each in its own Ray worker
    def training_pids() -> set[int] | None:
        pids = {pid for run_id in queued.values() if (pid := worker_pid(live, run_id))}
        return pids if len(pids) >= 2 else None

    assert len(until(training_pids, "two runs training at once")) == 2
    for name, run_id in queued.items():
        run = wait(live, run_id, SLOW)
        assert run["status"] == "succeeded", run["error"] or run["log_tail"]
        assert run["user_name"] == name and run["adapter_version"] == 1
        assert (live.config.adapters_dir / name / "1" / "meta.json").exists()
        # the server serves it on the next request, without a restart
        answer = greedy(live, keys[name])
        assert answer["model"] == "personal" and answer["adapter_version"] == 1
        assert current_version(live, keys[name]) == 1


def test_a_killed_worker_fails_its_run_only_and_the_previous_version_serves(ray_server):
    live = ray_server
    victim, other = live.add_user("vic"), live.add_user("otto")
    give_feedback(live, victim)
    assert wait(live, train(live, "vic")["id"], SLOW)["status"] == "succeeded"
    give_feedback(live, victim)
    give_feedback(live, other)
    doomed, fine = train(live, "vic")["id"], train(live, "otto")["id"]
    pid = until(lambda: worker_pid(live, doomed), "the victim's run to start training")
    os.kill(pid, signal.SIGKILL)
    lost, kept = wait(live, doomed, SLOW), wait(live, fine, SLOW)
    assert lost["status"] == "failed"
    assert "Ray worker running it died" in lost["error"], lost["error"]
    assert "previous adapter" in lost["error"]
    assert kept["status"] == "succeeded", kept["error"] or kept["log_tail"]
    assert current_version(live, victim) == 1 and greedy(live, victim)["adapter_version"] == 1
    assert current_version(live, other) == 1
    # nothing promoted twice: one succeeded run per served version
    rows = httpx.get(f"{live.url}/admin/runs", headers=live.headers(live.admin_key)).json()
    promoted = [(r["user_name"], r["adapter_version"]) for r in rows
                if r["status"] == "succeeded"]
    assert sorted(promoted) == [("otto", 1), ("vic", 1)]


def test_a_run_ended_meanwhile_publishes_nothing(db):
    """The guard behind "nothing double-promoted": a task finishing after its executor
    failed the run (its worker was thought lost) neither promotes nor overwrites the status."""
    from assistant.worker import RunAlreadyEnded, _finish_and_publish

    user, _ = create_user(db, "late")
    runs.enqueue(db, user["id"], False, "t")
    run = transaction(db, runs.claim_next, 1)
    db["adapter_versions"].insert({"user_id": user["id"], "version": 1, "parent_version": None,
                                   "path": "late/1", "base_id": "tiny", "metrics": "{}",
                                   "created_at": "2026-01-01"})
    assert transaction(db, runs.finish_running, run["id"], "failed", None, "", "worker lost")
    outcome = {"status": "succeeded", "adapter_version": 1, "reward_head_version": None,
               "metrics": {}, "events_used": 0}
    with pytest.raises(RunAlreadyEnded, match="nothing published"):
        transaction(db, _finish_and_publish, run, outcome, "")
    assert db["users"].get(user["id"])["current_version"] is None
    ended = runs.get_run(db, run["id"])
    assert ended["status"] == "failed" and ended["error"] == "worker lost"


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_ray_orphans_are_runs_whose_task_is_gone_not_another_servers(db):
    """Two servers with Ray executors on one store: a starting server used to fail every
    running run it held no task for, the other server's live ones too. Now only runs whose
    task is gone: a dead worker process on this host, or a lease that ran out anywhere."""
    users = [create_user(db, name)[0] for name in "abcde"]
    ids = [runs.enqueue(db, u["id"], False, "t")["id"] for u in users]
    for _ in ids:
        transaction(db, runs.claim_next, os.getpid(), 120)
    ours, other_here, dead_here, other_host, expired = ids
    transaction(db, runs.set_worker_pid, dead_here, dead_pid(), 120)
    db["training_runs"].update(other_host, {"host": "elsewhere", "pid": 1})
    db["training_runs"].update(expired, {"host": "elsewhere", "lease_until": "2020-01-01"})
    # `ours` and `other_here` both have a live process on this host; only `ours` is kept
    # by the caller, and `other_here` is left alone anyway (another server's live task).
    failed = transaction(db, runs.fail_orphans, True, {ours})
    assert failed == [dead_here, expired]
    status = {i: runs.get_run(db, i)["status"] for i in ids}
    assert status == {ours: "running", other_here: "running", dead_here: "failed",
                      other_host: "running", expired: "failed"}
    assert "ran out" in runs.get_run(db, expired)["error"]
    # the caller's own runs stay even when their lease looks run out (a slow renewal)
    db["training_runs"].update(ours, {"lease_until": "2020-01-01"})
    assert transaction(db, runs.fail_orphans, True, {ours}) == []


@pytest.mark.parametrize(("env", "field"), [
    ({"ASSISTANT_TRAINING_EXECUTOR": "slurm"}, "training.executor"),
    ({"ASSISTANT_TRAINING_MAX_PARALLEL_RUNS": "0"}, "training.max_parallel_runs"),
    ({"ASSISTANT_TRAINING_THREADS": "2", "ASSISTANT_TRAINING_RUN_CPUS": "1"},
     "training.run_cpus"),
])
def test_bad_executor_settings_are_named(env, field):
    with pytest.raises(ConfigError, match=field):
        load_config(ROOT / "config.toml", env=env)


def test_adapters_dir_setting(tmp_path):
    default = load_config(ROOT / "config.toml", env={"ASSISTANT_DATA_DIR": str(tmp_path)})
    assert default.adapters_dir == tmp_path / "adapters"
    assert default.training.executor == "process"
    shared = load_config(ROOT / "config.toml", env={"ASSISTANT_ADAPTERS_DIR": "/mnt/shared"})
    assert shared.adapters_dir == Path("/mnt/shared")
