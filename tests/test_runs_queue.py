"""The training-run queue: due users, one active run per user, orphans after a crash."""

import subprocess

import pytest

from feedback_store import runs
from feedback_store.db import transaction
from feedback_store.errors import BadRequest
from feedback_store.users import create_user
from tests.conftest import BOTH

BACKENDS = BOTH


def add_events(db, user_id: int, k: int) -> None:
    """k thumbs on k different answers: k events and k effective labels."""
    for i in range(k):
        event = db["feedback_events"].insert({"user_id": user_id, "kind": "thumbs",
                                              "message_ids": f"[{1000 * user_id + i}]",
                                              "created_at": "2026-01-01"}).last_pk
        db["thumbs"].insert({"user_id": user_id, "message_id": 1000 * user_id + i,
                             "value": "up", "event_id": event, "updated_at": "2026-01-01"})


def test_due_users_and_one_active_run_per_user(db):
    alice, _ = create_user(db, "alice")
    bob, _ = create_user(db, "bob")
    add_events(db, alice["id"], 5)
    add_events(db, bob["id"], 2)
    assert [u["name"] for u in runs.due_users(db, 3)] == ["alice"]
    queued = runs.request_training(db, None, False, 3, "test")
    assert [r["user_id"] for r in queued] == [alice["id"]]
    again = runs.request_training(db, "alice", True, 3, "test")
    assert again[0]["id"] == queued[0]["id"]                  # no second active run
    with pytest.raises(BadRequest, match="2 new labels"):
        runs.request_training(db, "bob", False, 3, "test")
    forced = runs.request_training(db, None, True, 3, "test")
    assert [r["user_id"] for r in forced] == [bob["id"]]


def test_claim_order_and_dead_worker_becomes_failed(db):
    alice, _ = create_user(db, "alice")
    bob, _ = create_user(db, "bob")
    first = runs.enqueue(db, alice["id"], False, "t")
    runs.enqueue(db, bob["id"], False, "t")
    dead = subprocess.Popen(["true"])
    dead.wait()
    claimed = transaction(db, runs.claim_next, dead.pid)
    assert claimed["id"] == first["id"] and claimed["status"] == "running"
    assert runs.fail_orphans(db) == [first["id"]]
    failed = runs.get_run(db, first["id"])
    assert failed["status"] == "failed" and "died" in failed["error"]
    assert runs.has_queued(db)          # bob's run is still queued, as after a restart


def test_running_run_of_a_live_process_is_kept(db):
    import os

    alice, _ = create_user(db, "alice")
    runs.enqueue(db, alice["id"], False, "t")
    run = runs.claim_next(db, os.getpid())
    assert runs.fail_orphans(db) == []
    assert runs.get_run(db, run["id"])["status"] == "running"


def queue_runs(db, n: int) -> list[int]:
    """n users with one queued run each (one active run per user); their run ids."""
    return [runs.enqueue(db, create_user(db, f"u{i}")[0]["id"], True, "t")["id"]
            for i in range(n)]


def test_concurrent_workers_never_claim_the_same_run(db, db_target):
    import threading

    from feedback_store.db import connect, retrying

    queued = queue_runs(db, 16)
    claimed: list[int] = []
    start = threading.Barrier(4)

    def worker(pid: int) -> None:
        conn = connect(db_target, check_same_thread=False)
        start.wait()
        while True:
            run = retrying(conn, runs.claim_next, pid, exclusive=False)
            if run is not None:
                claimed.append(run["id"])
            elif not runs.has_queued(conn):  # PostgreSQL: a claim may miss a run being taken
                break
        conn.close()

    workers = [threading.Thread(target=worker, args=(1000 + i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert sorted(claimed) == queued                  # every run claimed, none twice
    assert {r["status"] for r in runs.list_runs(db)} == {"running"}


def test_postgres_claims_skip_a_run_being_claimed_instead_of_waiting(postgres):
    from feedback_store.db import open_db

    url = postgres.new_database()
    first_db, second_db = open_db(url), open_db(url)
    first_run, second_run = queue_runs(first_db, 2)
    second_db.execute("set lock_timeout = '5s'")      # waiting on the row = this test fails
    with transaction(first_db, exclusive=False):
        mine = runs.claim_next(first_db, 1)          # row-locked, not committed yet
        theirs = transaction(second_db, runs.claim_next, 2, exclusive=False)
    assert (mine["id"], theirs["id"]) == (first_run, second_run)
    first_db.close()
    second_db.close()


def test_an_expired_lease_fails_the_run_even_with_its_process_alive(db):
    import os

    (run_id,) = queue_runs(db, 1)
    transaction(db, runs.claim_next, os.getpid(), -1)        # a lease that has run out
    assert not runs.renew_lease(db, run_id, os.getpid() + 1)  # not that worker's run
    assert runs.fail_orphans(db) == [run_id]
    failed = runs.get_run(db, run_id)
    assert failed["status"] == "failed" and "lease" in failed["error"]
    assert not runs.renew_lease(db, run_id, os.getpid())      # too late: the run is over


def test_another_hosts_run_lives_by_its_lease(db):
    import os

    (run_id,) = queue_runs(db, 1)
    transaction(db, runs.claim_next, os.getpid(), 60)
    assert runs.renew_lease(db, run_id, os.getpid(), 60)     # the heartbeat
    db["training_runs"].update(run_id, {"host": "elsewhere", "pid": 999_999_999})
    # its pid means nothing here, and nobody holds this host's training lock: still alive
    assert runs.fail_orphans(db, worker_running=False) == []
    db["training_runs"].update(run_id, {"lease_until": "2000-01-01T00:00:00.000+00:00"})
    assert runs.fail_orphans(db) == [run_id]
    assert "elsewhere" in runs.get_run(db, run_id)["error"]


def test_a_worker_taking_over_a_claimed_run_takes_its_lease(db):
    # The Ray executor claims a run in the server and runs it in a Ray worker: the worker
    # becomes the run's pid, host and lease holder, so a lease the server claimed (and never
    # renews) does not get the running task failed, and the worker's heartbeat holds it.
    import os

    (run_id,) = queue_runs(db, 1)
    transaction(db, runs.claim_next, os.getpid() + 1, -1)    # the server's claim, run out
    transaction(db, runs.set_worker_pid, run_id, os.getpid(), 60)
    assert runs.fail_orphans(db) == []
    assert runs.renew_lease(db, run_id, os.getpid(), 60)     # the worker's heartbeat
    assert not runs.renew_lease(db, run_id, os.getpid() + 1)  # no longer the server's
