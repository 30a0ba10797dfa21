"""Users, roles and hashed API keys."""

from __future__ import annotations

import hashlib
import re
import secrets

from feedback_store.clock import now
from feedback_store.db import insert
from feedback_store.errors import BadRequest, Conflict, NotFound
from feedback_store.sql import Database

KEY_PREFIX = "pa-"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ROLES = ("user", "admin")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    # fullmatch, not match: "$" also matches before a final newline ("alice\n" passed)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadRequest(
            "name must be 1-64 characters of letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit; got {name!r}")
    return name


def _store_key(db: Database, user_id: int, key: str) -> None:
    db.table("api_keys").insert({"user_id": user_id, "key_hash": hash_key(key), "prefix": key[:7],
                           "created_at": now(), "revoked_at": None})


def create_user(db: Database, name: str, admin: bool = False) -> tuple[dict, str]:
    """Create a user and their first API key; return (user row, plain key)."""
    check_name(name)
    if db["users"].count_where("name = ?", [name]):
        raise Conflict(f"a user named {name!r} already exists")
    user_id = insert(db, "users", {"name": name, "role": "admin" if admin else "user",
                                   "current_version": None, "created_at": now()})
    key = new_key()
    _store_key(db, user_id, key)
    return get_user(db, user_id), key


def get_user(db: Database, user_id: int) -> dict:
    rows = list(db["users"].rows_where("id = ?", [user_id]))
    if not rows:
        raise NotFound(f"no user with id {user_id}")
    return rows[0]


def get_user_by_name(db: Database, name: str) -> dict:
    rows = list(db["users"].rows_where("name = ?", [name]))
    if not rows:
        raise NotFound(f"no user named {name!r}")
    return rows[0]


def list_users(db: Database) -> list[dict]:
    return list(db["users"].rows_where(order_by="id"))


def user_for_key(db: Database, key: str) -> dict | None:
    """The user owning an unrevoked key, or None."""
    rows = list(db.query(
        "select users.* from api_keys join users on users.id = api_keys.user_id "
        "where api_keys.key_hash = ? and api_keys.revoked_at is null", [hash_key(key)]))
    return rows[0] if rows else None


def rotate_key(db: Database, user_id: int) -> str:
    """Revoke every key of the user and issue a new one."""
    get_user(db, user_id)
    revoke_keys(db, user_id)
    key = new_key()
    _store_key(db, user_id, key)
    return key


def revoke_keys(db: Database, user_id: int) -> int:
    cursor = db.execute("update api_keys set revoked_at = ? where user_id = ? and "
                        "revoked_at is null", [now(), user_id])
    return cursor.rowcount


def admin_count(db: Database) -> int:
    return db["users"].count_where("role = 'admin'")


def admin_exists(db: Database) -> bool:
    return bool(admin_count(db))


def first_admin(db: Database) -> int | None:
    """The lowest admin id, or None when there is no admin."""
    row = db.execute("select min(id) from users where role = 'admin'").fetchone()
    return row[0] if row else None


def user_exists(db: Database, user_id: int) -> bool:
    return bool(db["users"].count_where("id = ?", [user_id]))


def other_user_ids(db: Database, user_id: int) -> list[int]:
    return [u["id"] for u in db["users"].rows_where("id != ?", [user_id], order_by="id")]


def set_current_version(db: Database, user_id: int, version: int | None) -> None:
    db.table("users").update(user_id, {"current_version": version})


# Tables with a user_id column (features are keyed by message, deleted through messages).
USER_TABLES = ("thumbs", "comparisons", "rankings", "feedback_events",
               "reward_heads", "adapter_versions", "training_runs", "api_keys",
               "user_settings")


def delete_user(db: Database, user_id: int) -> None:
    """Erase the user and every row that holds their data (files are the caller's job)."""
    get_user(db, user_id)
    db.execute("delete from features where message_id in "
               "(select id from messages where user_id = ?)", [user_id])
    for table in USER_TABLES:
        db.execute(f"delete from {table} where user_id = ?", [user_id])
    db.execute("delete from messages where user_id = ?", [user_id])
    db.execute("delete from conversations where user_id = ?", [user_id])
    db.execute("delete from users where id = ?", [user_id])
