"""The training-run queue: due users, one active run per user, orphans after a crash."""

import subprocess

import pytest

from feedback_store import runs
from feedback_store.db import transaction
from feedback_store.errors import BadRequest
from feedback_store.users import create_user


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
