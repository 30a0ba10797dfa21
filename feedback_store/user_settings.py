"""Each user's own settings (the answer length, ...): one row per (user, name), the value as
JSON. The only module that reads or writes the user_settings table; which names and values
are valid is the caller's concern (assistant/user_settings.py)."""

from __future__ import annotations

import json
from typing import Any

from feedback_store.clock import now
from feedback_store.sql import Database


def get_settings(db: Database, user_id: int) -> dict[str, Any]:
    """The settings this user has saved (names they never set are absent)."""
    return {r["name"]: json.loads(r["value"])
            for r in db["user_settings"].rows_where("user_id = ?", [user_id])}


def put_settings(db: Database, user_id: int, values: dict[str, Any]) -> dict[str, Any]:
    """Save these settings (others stay as they were); return all the user's settings.
    Call inside a write transaction."""
    stamp = now()
    for name, value in values.items():
        db.execute("insert into user_settings (user_id, name, value, updated_at) "
                   "values (?, ?, ?, ?) on conflict (user_id, name) do update set "
                   "value = excluded.value, updated_at = excluded.updated_at",
                   [user_id, name, json.dumps(value), stamp])
    return get_settings(db, user_id)
