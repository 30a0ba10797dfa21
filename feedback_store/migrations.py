"""Numbered schema migrations. Each runs once, in order, in its own transaction.

Add a new function `mNNN_what(db)` at the end and append it to MIGRATIONS; never edit one
that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

from feedback_store.clock import now


def m001_initial(db: Database) -> None:
    db["users"].create({
        "id": int, "name": str, "role": str, "current_version": int, "created_at": str,
    }, pk="id", not_null={"name", "role", "created_at"})
    db["users"].create_index(["name"], unique=True)

    # Keys are stored as SHA-256 of a 256-bit random secret: a fast hash is enough for
    # high-entropy keys (no dictionary to attack), and lookups stay O(1) by index.
    db["api_keys"].create({
        "id": int, "user_id": int, "key_hash": str, "prefix": str,
        "created_at": str, "revoked_at": str,
    }, pk="id", foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "key_hash", "created_at"})
    db["api_keys"].create_index(["key_hash"], unique=True)

    db["conversations"].create({
        "id": int, "user_id": int, "title": str, "system": str, "created_at": str,
        "updated_at": str,
    }, pk="id", foreign_keys=[("user_id", "users", "id")], not_null={"user_id", "created_at"})
    db["conversations"].create_index(["user_id", "updated_at"])

    # One row per turn. A user turn's parent is the chosen assistant candidate it follows
    # (null for the first turn). Assistant candidates answering one user turn share
    # candidate_group = that user turn's id; `chosen` marks the branch the conversation
    # continues from.
    db["messages"].create({
        "id": int, "conversation_id": int, "user_id": int, "role": str, "content": str,
        "parent_id": int, "candidate_group": int, "candidate_index": int, "chosen": int,
        "model": str, "adapter_version": int, "temperature": float, "top_p": float,
        "max_tokens": int, "prompt_tokens": int, "completion_tokens": int,
        "first_token_ms": float, "total_ms": float, "finish_reason": str, "created_at": str,
    }, pk="id", foreign_keys=[("conversation_id", "conversations", "id"),
                              ("user_id", "users", "id")],
        not_null={"conversation_id", "user_id", "role", "content", "created_at"})
    db["messages"].create_index(["conversation_id"])
    db["messages"].create_index(["candidate_group"])
    db["messages"].create_index(["user_id"])

    # Every feedback action is one row; training_run_id is set when a run consumes it.
    db["feedback_events"].create({
        "id": int, "user_id": int, "kind": str, "message_ids": str, "value": str,
        "reasons": str, "comment": str, "created_at": str, "training_run_id": int,
    }, pk="id", foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "kind", "message_ids", "created_at"})
    db["feedback_events"].create_index(["user_id", "training_run_id"])

    # The current thumbs vote per (user, message); the history is in feedback_events.
    db["thumbs"].create({
        "user_id": int, "message_id": int, "value": str, "reasons": str, "comment": str,
        "event_id": int, "updated_at": str,
    }, pk=("user_id", "message_id"))
    db["comparisons"].create({
        "id": int, "user_id": int, "event_id": int, "message_a": int, "message_b": int,
        "choice": str, "reasons": str, "comment": str, "created_at": str,
    }, pk="id")
    db["comparisons"].create_index(["user_id"])
    db["rankings"].create({
        "id": int, "user_id": int, "event_id": int, "message_ids": str, "created_at": str,
    }, pk="id")
    db["rankings"].create_index(["user_id"])

    db["adapter_versions"].create({
        "id": int, "user_id": int, "version": int, "parent_version": int, "path": str,
        "base_id": str, "metrics": str, "created_at": str,
    }, pk="id", foreign_keys=[("user_id", "users", "id")])
    db["adapter_versions"].create_index(["user_id", "version"], unique=True)

    db["training_runs"].create({
        "id": int, "user_id": int, "status": str, "force": int, "requested_by": str,
        "created_at": str, "started_at": str, "finished_at": str, "adapter_version": int,
        "events_used": int, "metrics": str, "log_tail": str, "error": str, "pid": int,
    }, pk="id", foreign_keys=[("user_id", "users", "id")], not_null={"user_id", "status"})
    db["training_runs"].create_index(["status"])
    db["training_runs"].create_index(["user_id"])

    db["reward_heads"].create({
        "id": int, "user_id": int, "version": int, "path": str, "base_id": str,
        "metrics": str, "created_at": str,
    }, pk="id")
    db["reward_heads"].create_index(["user_id"])

    # Frozen base-model features per assistant message, tied to the base they came from.
    db["features"].create({
        "message_id": int, "base_id": str, "dim": int, "vector": bytes, "created_at": str,
    }, pk=("message_id", "base_id"))


def m002_sampling_settings(db: Database) -> None:
    # The rest of what sampled an answer, next to temperature and top_p: OpenAI's repetition
    # penalties and the request's seed (null = unseeded). Rows from before stay null.
    for column, kind in (("frequency_penalty", float), ("presence_penalty", float),
                         ("seed", int)):
        db["messages"].add_column(column, kind)


def m003_candidate_provenance(db: Database) -> None:
    # How each answer was produced (issue 14): source = personal | base | previous | hot |
    # arm | peer | client, arm = the style arm's name (its instruction is not stored: it was
    # never shown), selection = how an exploring turn picked it (random | diversity |
    # uncertainty; null = not an exploring turn). Earlier rows stay null.
    for column in ("source", "arm", "selection"):
        db["messages"].add_column(column, str)


MIGRATIONS: list[Callable[[Database], None]] = [m001_initial, m002_sampling_settings,
                                                m003_candidate_provenance]


def migrate(db: Database) -> list[str]:
    """Apply pending migrations; return the names applied."""
    if "migrations" not in db.table_names():
        db["migrations"].create({"id": int, "name": str, "applied_at": str}, pk="id")
    done = {row["id"] for row in db["migrations"].rows}
    applied = []
    for number, fn in enumerate(MIGRATIONS, start=1):
        if number in done:
            continue
        with db.conn:
            fn(db)
            db["migrations"].insert({"id": number, "name": fn.__name__,
                                     "applied_at": now()})
        applied.append(fn.__name__)
    return applied
