"""Erase a user completely: database rows, adapter and reward-head files, loaded adapters.

Rows go first, in one transaction that also refuses to remove the last admin, so a refused
request touches nothing; files and memory follow once the user no longer exists. The store
runs with secure_delete (freed pages are zeroed), and the WAL, which still holds the erased
rows' old pages, is checkpointed and truncated right after.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from adapters import registry, reward_head
from assistant.state import AppState
from feedback_store import users
from feedback_store.errors import AssistantError, Conflict, NotFound
from feedback_store.feedback import MAX_ID
from feedback_store.sql import Database

log = logging.getLogger("assistant.erase")


def user_paths(db: Database, user: dict, root: Path) -> list[Path]:
    """The user's directory (adapters_dir/<name>) plus any recorded adapter or reward-head
    path, keeping only paths strictly inside adapters_dir (never delete anything else)."""
    root = root.resolve()
    recorded = [*registry.recorded_paths(db, user["id"]),
                *reward_head.recorded_paths(db, user["id"])]
    found = [root / user["name"], *(root / p for p in recorded)]
    return [p for p in found if p.resolve() != root and p.resolve().is_relative_to(root)]


def delete_user_rows(db: Database, user_id: int, root: Path) -> tuple[dict, list[Path]]:
    """Delete every row of the user (one transaction); return the row and the paths to remove."""
    if not 1 <= user_id <= MAX_ID:  # beyond SQLite's integers: unknown, not a crash
        raise NotFound(f"no user with id {user_id}")
    user = users.get_user(db, user_id)
    if user["role"] == "admin" and users.admin_count(db) == 1:
        raise Conflict(f"user {user['name']!r} is the last admin and cannot be deleted; "
                       "make another user an admin first")
    paths = user_paths(db, user, root)
    users.delete_user(db, user_id)
    return user, paths


def remove_paths(paths: list[Path]) -> None:
    for path in paths:
        try:
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
        except OSError as exc:
            # The rows are gone already; say loudly which files were left behind.
            raise AssistantError(f"user deleted but {path} could not be removed: {exc}") from exc


async def erase_user(ctx: AppState, user_id: int) -> dict:
    """Remove the user's rows, files and loaded adapters; return what was erased."""
    user, paths = await ctx.store.write(delete_user_rows, user_id, ctx.adapters_dir)
    busy, _, _ = await ctx.store.checkpoint()
    if busy:   # a long read elsewhere (a training worker) kept the WAL: the next one clears it
        log.warning("erased user %s, but a reader kept the WAL from being truncated", user_id)
    await asyncio.to_thread(ctx.engine.forget_user, user_id)
    await asyncio.to_thread(remove_paths, paths)
    if ctx.admin_user_id == user_id:
        # ASSISTANT_ADMIN_KEY acted as this user: let it act as a remaining admin instead.
        ctx.admin_user_id = await ctx.store.read(users.first_admin)
    log.info("erased user %s (%s) and %d path(s)", user_id, user["name"], len(paths))
    return {"id": user_id, "name": user["name"], "erased": True}
