"""Training runs as a durable queue: queued -> running -> succeeded | rejected | failed.

The queue lives in the store so queued runs survive a restart; a run left `running` by a
process that died is marked `failed` (the user's previous adapter keeps serving). Whether a
worker on this host is alive is told by the OS lock it holds for the run's life
(assistant/run_lock.py), not by its pid alone: a pid can be reused by an unrelated process
after a crash. A worker anywhere (a shared PostgreSQL store) also renews its run's lease
while it trains; a run whose lease ran out is failed by whoever looks.

Claiming is safe with many workers: on PostgreSQL `FOR UPDATE SKIP LOCKED` gives each
concurrent claim a different run without waiting on the others; on SQLite the claim runs in
a BEGIN IMMEDIATE transaction, one writer at a time.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Collection

from feedback_store.clock import later, now
from feedback_store.db import insert
from feedback_store.errors import BadRequest, NotFound
from feedback_store.sql import Database

ACTIVE = ("queued", "running")
FINAL = ("succeeded", "rejected", "failed")
LOG_TAIL_CHARS = 4000
LEASE_SECONDS = 120          # [store] run_lease_seconds' default


def this_host() -> str:
    return socket.gethostname()


def new_event_count(db: Database, user_id: int) -> int:
    """New feedback as effective labels (a toggled vote is one label, not several events)."""
    from feedback_store.feedback import effective_new_labels

    return effective_new_labels(db, user_id)


def active_run(db: Database, user_id: int) -> dict | None:
    rows = list(db["training_runs"].rows_where(
        "user_id = ? and status in ('queued', 'running')", [user_id], order_by="id", limit=1))
    return rows[0] if rows else None


def enqueue(db: Database, user_id: int, force: bool, requested_by: str) -> dict:
    """Queue a run for the user, or return the one already queued or running."""
    existing = active_run(db, user_id)
    if existing:
        return existing
    run_id = insert(db, "training_runs", {
        "user_id": user_id, "status": "queued", "force": int(force),
        "requested_by": requested_by, "created_at": now(),
    })
    return get_run(db, run_id)


def request_training(db: Database, user_name: str | None, force: bool, min_new_events: int,
                     requested_by: str) -> list[dict]:
    """Queue runs for one named user or for every due user; `force` ignores the minimum
    (but a user still needs some feedback: a reward head cannot learn from nothing)."""
    from feedback_store.feedback import has_events
    from feedback_store.users import get_user_by_name

    if user_name is not None:
        user = get_user_by_name(db, user_name)
        count = new_event_count(db, user["id"])
        if not force and count < min_new_events:
            raise BadRequest(f"user {user_name!r} has {count} new labels (feedback events, a "
                             f"changed vote counted once); training "
                             f"needs at least {min_new_events} (or force)")
        if not has_events(db, user["id"]):
            raise BadRequest(f"user {user_name!r} has no feedback yet: there is nothing to "
                             "train on")
        return [enqueue(db, user["id"], force, requested_by)]
    due = due_users(db, 1 if force else min_new_events)
    return [enqueue(db, u["id"], force, requested_by) for u in due]


def due_users(db: Database, min_new_events: int) -> list[dict]:
    """Users with at least `min_new_events` new effective labels and no active run."""
    candidates = db.query(
        "select u.* from users u where exists (select 1 from feedback_events e where "
        "e.user_id = u.id and e.training_run_id is null) and not exists (select 1 from "
        "training_runs r where r.user_id = u.id and r.status in ('queued', 'running')) "
        "order by u.id")
    due = [dict(u, new_events=new_event_count(db, u["id"])) for u in candidates]
    return [u for u in due if u["new_events"] >= max(1, min_new_events)]


def get_run(db: Database, run_id: int) -> dict:
    rows = list(db.query(
        "select r.*, u.name as user_name from training_runs r "
        "left join users u on u.id = r.user_id where r.id = ?", [run_id]))
    if not rows:
        raise NotFound(f"training run {run_id} not found")
    return _decode(rows[0])


def list_runs(db: Database, user_id: int | None = None, limit: int = 100) -> list[dict]:
    where, args = ("where r.user_id = ?", [user_id]) if user_id is not None else ("", [])
    rows = list(db.query(
        "select r.*, u.name as user_name from training_runs r left join users u "
        f"on u.id = r.user_id {where} order by r.id desc limit ?", [*args, limit]))
    return [_decode(r) for r in rows]


def user_runs(db: Database, user_id: int) -> list[dict]:
    """The user's runs as stored, oldest first (the data export)."""
    return list(db["training_runs"].rows_where("user_id = ?", [user_id], order_by="id"))


def last_run(db: Database, user_id: int) -> dict | None:
    """The user's newest run as stored, or None."""
    rows = list(db["training_runs"].rows_where("user_id = ?", [user_id], order_by="id desc",
                                               limit=1))   # list: no cursor left open
    return rows[0] if rows else None


def _decode(row: dict) -> dict:
    row = dict(row)
    row["metrics"] = json.loads(row["metrics"]) if row.get("metrics") else None
    row["force"] = bool(row.get("force"))
    return row


def claim_next(db: Database, pid: int, lease_seconds: float = LEASE_SECONDS) -> dict | None:
    """Take the oldest queued run and mark it running by this process, leased for
    `lease_seconds`. Call inside a transaction (on PostgreSQL, `exclusive=False` lets claims
    run side by side: the row lock taken here keeps two of them off one run). None when no
    run is queued, or (PostgreSQL) when every queued run is being claimed by another worker."""
    skip_locked = " for update skip locked" if db.is_postgres else ""
    rows = list(db.query("select id from training_runs where status = 'queued' "
                         f"order by id limit 1{skip_locked}"))
    if not rows:
        return None
    db.table("training_runs").update(rows[0]["id"], {
        "status": "running", "started_at": now(), "pid": pid, "host": this_host(),
        "lease_until": later(lease_seconds)})
    return get_run(db, rows[0]["id"])


def renew_lease(db: Database, run_id: int, pid: int, lease_seconds: float = LEASE_SECONDS
                ) -> bool:
    """The worker's heartbeat: extend its running run's lease. False when the run is no
    longer this worker's to renew (finished, or failed because the lease had run out)."""
    cursor = db.execute("update training_runs set lease_until = ? where id = ? and "
                        "status = 'running' and pid = ? and host = ?",
                        [later(lease_seconds), run_id, pid, this_host()])
    return cursor.rowcount == 1


def set_reward_head_version(db: Database, run_id: int, version: int) -> None:
    """The reward head version the run wrote (published only if the run finishes)."""
    db.table("training_runs").update(run_id, {"reward_head_version": version})


def finish(db: Database, run_id: int, status: str, metrics: dict | None = None,
           log_tail: str = "", error: str | None = None,
           adapter_version: int | None = None, events_used: int | None = None) -> None:
    update = _final(status, metrics, log_tail, error, adapter_version, events_used)
    db.table("training_runs").update(run_id, update)


def _final(status: str, metrics: dict | None, log_tail: str, error: str | None,
           adapter_version: int | None, events_used: int | None) -> dict:
    """The columns a run's final status writes."""
    if status not in FINAL:
        raise ValueError(f"not a final status: {status}")
    update = {"status": status, "finished_at": now(), "error": error,
              "adapter_version": adapter_version, "events_used": events_used}
    if metrics is not None:         # a failed run keeps the progress it recorded
        update["metrics"] = json.dumps(metrics, default=float)
    if log_tail:
        update["log_tail"] = log_tail[-LOG_TAIL_CHARS:]
    return update


# ---- guarded by the run's state (training.executor = "ray": the executor and the task may
# both try to end a run; issue 19) ------------------------------------------------------------

def finish_running(db: Database, run_id: int, status: str, metrics: dict | None = None,
                   log_tail: str = "", error: str | None = None,
                   adapter_version: int | None = None,
                   events_used: int | None = None) -> bool:
    """finish() only if the run is still `running`, in one conditional UPDATE; False when
    it was already ended (failed by its executor after its worker was lost, or finished by
    another execution of it). Call it before publishing, in the same transaction: a False
    means publish nothing, so no run is promoted twice or after it was failed."""
    update = _final(status, metrics, log_tail, error, adapter_version, events_used)
    columns = ", ".join(f"{name} = ?" for name in update)
    cursor = db.execute(f"update training_runs set {columns} where id = ? and "
                        "status = 'running'", [*update.values(), run_id])
    return cursor.rowcount == 1


def set_worker_pid(db: Database, run_id: int, pid: int,
                   lease_seconds: float = LEASE_SECONDS) -> None:
    """The process executing a claimed run, as it starts (a Ray worker, on some node): the
    run's pid, host and lease become its own, so its heartbeat (renew_lease) holds them."""
    db.execute("update training_runs set pid = ?, host = ?, lease_until = ? where id = ? and "
               "status = 'running'", [pid, this_host(), later(lease_seconds), run_id])


def update_progress(db: Database, run_id: int, metrics: dict, log_tail: str) -> None:
    db.table("training_runs").update(run_id, {"metrics": json.dumps(metrics, default=float),
                                        "log_tail": log_tail[-LOG_TAIL_CHARS:]})


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _orphan_error(run: dict, worker_running: bool) -> str | None:
    """Why a running run is orphaned, or None while its worker may be alive.

    A lease that ran out is a dead worker wherever it ran. Otherwise only this host's
    workers can be judged: worker_running=False (nobody holds the training lock) means each
    of this host's running runs is orphaned, even if its pid now belongs to some other
    process; a run of another host waits for its lease."""
    live = " the previous adapter and reward head stay live"
    if run["lease_until"] is not None and run["lease_until"] < now():
        return (f"the training worker (pid {run['pid']} on {run['host']}) stopped renewing "
                f"its lease, which ran out at {run['lease_until']} (killed, crashed or cut "
                f"off);{live}")
    if run["host"] not in (None, this_host()):
        return None
    if worker_running and _alive(run["pid"]):
        return None
    return (f"the training process (pid {run['pid']}) died before finishing (killed, crashed "
            f"or its server stopped);{live}")


def fail_orphans(db: Database, worker_running: bool = True,
                 keep: Collection[int] = ()) -> list[int]:
    """Runs marked running whose worker is gone (see _orphan_error) become failed; runs in
    `keep` (whose tasks the caller holds) are left alone."""
    failed = []
    for run in list(db["training_runs"].rows_where("status = 'running'", order_by="id")):
        error = None if run["id"] in keep else _orphan_error(run, worker_running)
        if error is not None:
            finish(db, run["id"], "failed", error=error)
            failed.append(run["id"])
    return failed


def has_queued(db: Database) -> bool:
    return bool(db["training_runs"].count_where("status = 'queued'"))
