"""Schema migrations, keyed by name. Each runs once, in order, in its own transaction.

Add a new function `mNNN_what(db)` at the end and append it to MIGRATIONS; never edit one
that has shipped. The `migrations` table records each applied name; a migration counts as
applied when its name without the `mNNN_` number is recorded, so renumbering one (two
branches adding the same number) never runs it twice.

A migration runs in one real transaction (DDL included), so one that fails leaves the
schema as it was. Foreign keys are off while migrations run (SQLite cannot rebuild a
referenced table otherwise, and the switch is a no-op inside a transaction); each
migration's transaction checks them with `PRAGMA foreign_key_check` before committing.

The same migrations build a PostgreSQL store: tables, columns and indexes are made through
feedback_store.sql (create_table, add_column, create_index), which writes each dialect's
types and its auto-numbered id; the SQLite-only steps (m003's rebuild, the PRAGMAs) are
no-ops there. PostgreSQL checks foreign keys itself, DDL included, and its transactional
DDL rolls back a failed migration the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from feedback_store.clock import now
from feedback_store.sql import SQLITE, Database, add_column, create_index, create_table, id_column


def m001_initial(db: Database) -> None:
    create_table(db, "users", {
        "id": int, "name": str, "role": str, "current_version": int, "created_at": str,
    }, pk="id", not_null={"name", "role", "created_at"})
    create_index(db, "users", ["name"], unique=True)

    # Keys are stored as SHA-256 of a 256-bit random secret: a fast hash is enough for
    # high-entropy keys (no dictionary to attack), and lookups stay O(1) by index.
    create_table(db, "api_keys", {
        "id": int, "user_id": int, "key_hash": str, "prefix": str,
        "created_at": str, "revoked_at": str,
    }, pk="id", foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "key_hash", "created_at"})
    create_index(db, "api_keys", ["key_hash"], unique=True)

    create_table(db, "conversations", {
        "id": int, "user_id": int, "title": str, "system": str, "created_at": str,
        "updated_at": str,
    }, pk="id", foreign_keys=[("user_id", "users", "id")], not_null={"user_id", "created_at"})
    create_index(db, "conversations", ["user_id", "updated_at"])

    # One row per turn. A user turn's parent is the chosen assistant candidate it follows
    # (null for the first turn). Assistant candidates answering one user turn share
    # candidate_group = that user turn's id; `chosen` marks the branch the conversation
    # continues from.
    create_table(db, "messages", {
        "id": int, "conversation_id": int, "user_id": int, "role": str, "content": str,
        "parent_id": int, "candidate_group": int, "candidate_index": int, "chosen": int,
        "model": str, "adapter_version": int, "temperature": float, "top_p": float,
        "max_tokens": int, "prompt_tokens": int, "completion_tokens": int,
        "first_token_ms": float, "total_ms": float, "finish_reason": str, "created_at": str,
    }, pk="id", foreign_keys=[("conversation_id", "conversations", "id"),
                              ("user_id", "users", "id")],
        not_null={"conversation_id", "user_id", "role", "content", "created_at"})
    create_index(db, "messages", ["conversation_id"])
    create_index(db, "messages", ["candidate_group"])
    create_index(db, "messages", ["user_id"])

    # Every feedback action is one row; training_run_id is set when a run consumes it.
    create_table(db, "feedback_events", {
        "id": int, "user_id": int, "kind": str, "message_ids": str, "value": str,
        "reasons": str, "comment": str, "created_at": str, "training_run_id": int,
    }, pk="id", foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "kind", "message_ids", "created_at"})
    create_index(db, "feedback_events", ["user_id", "training_run_id"])

    # The current thumbs vote per (user, message); the history is in feedback_events.
    create_table(db, "thumbs", {
        "user_id": int, "message_id": int, "value": str, "reasons": str, "comment": str,
        "event_id": int, "updated_at": str,
    }, pk=("user_id", "message_id"))
    create_table(db, "comparisons", {
        "id": int, "user_id": int, "event_id": int, "message_a": int, "message_b": int,
        "choice": str, "reasons": str, "comment": str, "created_at": str,
    }, pk="id")
    create_index(db, "comparisons", ["user_id"])
    create_table(db, "rankings", {
        "id": int, "user_id": int, "event_id": int, "message_ids": str, "created_at": str,
    }, pk="id")
    create_index(db, "rankings", ["user_id"])

    create_table(db, "adapter_versions", {
        "id": int, "user_id": int, "version": int, "parent_version": int, "path": str,
        "base_id": str, "metrics": str, "created_at": str,
    }, pk="id", foreign_keys=[("user_id", "users", "id")])
    create_index(db, "adapter_versions", ["user_id", "version"], unique=True)

    create_table(db, "training_runs", {
        "id": int, "user_id": int, "status": str, "force": int, "requested_by": str,
        "created_at": str, "started_at": str, "finished_at": str, "adapter_version": int,
        "events_used": int, "metrics": str, "log_tail": str, "error": str, "pid": int,
    }, pk="id", foreign_keys=[("user_id", "users", "id")], not_null={"user_id", "status"})
    create_index(db, "training_runs", ["status"])
    create_index(db, "training_runs", ["user_id"])

    create_table(db, "reward_heads", {
        "id": int, "user_id": int, "version": int, "path": str, "base_id": str,
        "metrics": str, "created_at": str,
    }, pk="id")
    create_index(db, "reward_heads", ["user_id"])

    # Frozen base-model features per assistant message, tied to the base they came from.
    create_table(db, "features", {
        "message_id": int, "base_id": str, "dim": int, "vector": bytes, "created_at": str,
    }, pk=("message_id", "base_id"))


def m002_sampling_settings(db: Database) -> None:
    # The rest of what sampled an answer, next to temperature and top_p: OpenAI's repetition
    # penalties and the request's seed (null = unseeded). Rows from before stay null.
    for column, kind in (("frequency_penalty", float), ("presence_penalty", float),
                         ("seed", int)):
        add_column(db, "messages", column, kind)


def _with_autoincrement(db: Database, table: str) -> None:
    """Rebuild `table` with `id INTEGER PRIMARY KEY AUTOINCREMENT`, keeping rows, columns,
    indexes and the foreign keys (SQLite's documented 12-step table rebuild)."""
    sql = db.execute("select sql from sqlite_master where type = 'table' and name = ?",
                     [table]).fetchone()[0]
    if "AUTOINCREMENT" in sql.upper():
        return
    new_sql, n = re.subn(r"^(CREATE TABLE\s+)(\[\w+\]|\"\w+\"|\w+)", rf"\1[_new_{table}]", sql)
    new_sql, m = re.subn(r"((?:\[id\]|\"id\"|\bid\b)\s+INTEGER\s+PRIMARY\s+KEY)",
                         r"\1 AUTOINCREMENT", new_sql, flags=re.IGNORECASE)
    if n != 1 or m != 1:
        raise RuntimeError(f"cannot add AUTOINCREMENT to {table}: unexpected schema {sql!r}")
    indexes = [r[0] for r in db.execute(
        "select sql from sqlite_master where type = 'index' and tbl_name = ? "
        "and sql is not null", [table])]
    db.execute(new_sql)
    db.execute(f"insert into [_new_{table}] select * from [{table}]")
    db.execute(f"drop table [{table}]")
    db.execute(f"alter table [_new_{table}] rename to [{table}]")
    for index_sql in indexes:
        db.execute(index_sql)


AUTOINCREMENT_TABLES = ("users", "api_keys", "conversations", "messages", "feedback_events",
                        "comparisons", "rankings", "adapter_versions", "training_runs",
                        "reward_heads")


def m003_ids_never_reused(db: Database) -> None:
    # Without AUTOINCREMENT, SQLite hands out max(id) + 1: erase the newest user and the next
    # one gets their id (and their old exports, logs and cached adapters point at a stranger).
    # AUTOINCREMENT keeps a high-water mark in sqlite_sequence instead. (PostgreSQL's
    # identity columns never reuse a number: nothing to do there.)
    if db.dialect != SQLITE:
        return
    for table in AUTOINCREMENT_TABLES:
        if table in db.table_names():
            _with_autoincrement(db, table)


def m004_reward_heads_published_by_finished_runs(db: Database) -> None:
    # A run writes its reward head early (the RL phase needs it) but publishes it only when it
    # finishes: a killed or failed run's head must not become the user's live head. Heads
    # from before were all live; the run records which head version it wrote.
    add_column(db, "reward_heads", "published_at", str)
    db.execute("update reward_heads set published_at = created_at")
    add_column(db, "training_runs", "reward_head_version", int)


def m005_adapter_fallback_from(db: Database) -> None:
    # The adapter version that should have served an answer but failed to load (files
    # missing or corrupt); the answer then came from adapter_version (an earlier one, or
    # null: the base). Null for every normal answer.
    add_column(db, "messages", "adapter_fallback_from", int)


def m006_candidate_provenance(db: Database) -> None:
    # How each answer was produced (issue 14): source = personal | base | previous | hot |
    # arm | peer, arm = the style arm's name (its instruction is not stored: it was never
    # shown), selection = how an exploring turn picked it (random | diversity | uncertainty;
    # null = not an exploring turn). Earlier rows stay null.
    for column in ("source", "arm", "selection"):
        add_column(db, "messages", column, str)


def m007_user_settings(db: Database) -> None:
    """Per-user settings the server applies (the answer length), owned by
    feedback_store/user_settings.py; one row per (user, name), the value as JSON."""
    integer = "bigint" if db.is_postgres else "integer"
    db.execute(f"create table if not exists user_settings (user_id {integer} not null "
               "references users(id), name text not null, value text not null, "
               "updated_at text not null, primary key (user_id, name))")


def m008_run_leases(db: Database) -> None:
    # A claimed run carries a lease its worker renews while it trains (a heartbeat) and the
    # host it runs on. Past lease_until the worker is taken for dead and the run fails, on
    # whichever machine notices: with a shared PostgreSQL store the pid and the OS lock only
    # tell about workers on this host. Runs claimed before stay null (judged by pid, as then).
    add_column(db, "training_runs", "lease_until", str)
    add_column(db, "training_runs", "host", str)


MIGRATIONS: list[Callable[[Database], None]] = [
    m001_initial, m002_sampling_settings, m003_ids_never_reused,
    m004_reward_heads_published_by_finished_runs, m005_adapter_fallback_from,
    m006_candidate_provenance, m007_user_settings, m008_run_leases]


def key(name: str) -> str:
    """What identifies a migration: its name without the `mNNN_` number."""
    return re.sub(r"^m\d+_", "", name)


def _applied(db: Database) -> set[str]:
    return {key(r[0]) for r in db.execute("select name from migrations")}


def _ensure_table(db: Database) -> None:
    # Older databases recorded (id = number, name); a name is the key from now on, and the
    # id is only the order of application.
    db.execute(f"create table if not exists migrations ({id_column(db.dialect)}, name text, "
               "applied_at text)")
    db.execute("create unique index if not exists migrations_name on migrations (name)")


def _apply(db: Database, fn: Callable[[Database], None]) -> bool:
    """Run one migration in its own transaction unless (re-checked under the write lock, as
    the server and a worker may start together) it is recorded already."""
    from feedback_store.db import transaction

    with transaction(db):
        if key(fn.__name__) in _applied(db):
            return False
        if db.is_postgres:                # it checks foreign keys itself
            fn(db)
        else:
            before = len(db.execute("PRAGMA foreign_key_check").fetchall())
            fn(db)
            problems = db.execute("PRAGMA foreign_key_check").fetchall()
            if len(problems) > before:    # only what this migration broke stops it
                raise RuntimeError(f"migration {fn.__name__} broke foreign keys: "
                                   f"{problems[:5]}")
        db.execute("insert into migrations (name, applied_at) values (?, ?)",
                   [fn.__name__, now()])
    return True


def migrate(db: Database, migrations: list[Callable[[Database], None]] | None = None
            ) -> list[str]:
    """Apply pending migrations; return the names applied."""
    from feedback_store.db import transaction

    with transaction(db):
        _ensure_table(db)
    pending = [fn for fn in (MIGRATIONS if migrations is None else migrations)
               if key(fn.__name__) not in _applied(db)]
    if not pending:
        return []
    if db.is_postgres:
        return [fn.__name__ for fn in pending if _apply(db, fn)]
    db.execute("PRAGMA foreign_keys=OFF")
    try:
        return [fn.__name__ for fn in pending if _apply(db, fn)]
    finally:
        db.execute("PRAGMA foreign_keys=ON")
