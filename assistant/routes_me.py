"""The caller's own account: summary, key rotation, full data export, erasure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from litestar import Router, delete, get, post, put
from litestar.di import Provide

from adapters import registry
from assistant.api_docs import SettingsBody
from assistant.auth import current_user
from assistant.bodies import SettingsIn, parse
from assistant.erase import erase_user
from assistant.rewards import head_summary
from assistant.state import AppState
from assistant.user_settings import check_settings, read_settings, save_settings
from feedback_store import conversations as conv
from feedback_store import feedback as fb
from feedback_store import runs, users
from feedback_store.db import snapshot
from feedback_store.sql import Database
from feedback_store.training_data import FORMATS, source_preferences, training_rows

T = TypeVar("T")
USER_FIELDS = ("id", "name", "role", "created_at", "current_version")
RUN_FIELDS = ("id", "status", "created_at", "finished_at", "adapter_version", "error")


def _adapter(db: Database, user_id: int, version: int | None) -> dict | None:
    row = registry.find_version(db, user_id, version)
    return {"version": version, "created_at": row["created_at"]} if row else None


def _last_run(db: Database, user_id: int) -> dict | None:
    row = runs.last_run(db, user_id)
    return {k: row[k] for k in RUN_FIELDS} if row else None


def me_summary(db: Database, user_id: int, base_id: str) -> dict:
    user = users.get_user(db, user_id)
    return {**{k: user[k] for k in USER_FIELDS}, "counts": fb.counts(db, user_id),
            "adapter": _adapter(db, user_id, user["current_version"]),
            "last_training_run": _last_run(db, user_id),
            "reward_head": head_summary(db, user_id, base_id),
            "source_preferences": source_preferences(db, user_id)}


def _snapshot(db: Database, fn: Callable[..., T], *args: Any) -> T:
    """Run several reads in one read transaction so an export is self-consistent."""
    with snapshot(db):
        return fn(db, *args)


def export_user(db: Database, user_id: int) -> dict:
    """Everything stored about the caller (API key hashes excepted: they are credentials)."""
    user = users.get_user(db, user_id)
    conversations = [conv.conversation_detail(db, user_id, c["id"])
                     for c in conv.list_conversations(db, user_id)]
    return {
        "user": {k: user[k] for k in USER_FIELDS},
        "conversations": conversations,
        "feedback_events": fb.events(db, user_id),
        "thumbs": fb.all_thumbs(db, user_id),
        "comparisons": fb.comparisons(db, user_id),
        "rankings": fb.rankings(db, user_id),
        "training_data": {fmt: training_rows(db, user_id, fmt) for fmt in FORMATS},
        "source_preferences": source_preferences(db, user_id),
        "adapter_versions": registry.version_rows(db, user_id),
        "training_runs": runs.user_runs(db, user_id),
        "settings": read_settings(db, user_id),
    }


@get("/me")
async def me(user: dict, ctx: AppState) -> dict:
    summary = await ctx.store.read(me_summary, user["id"], ctx.engine.base_id)
    return {**summary, "limits": limits(ctx)}


def limits(ctx: AppState) -> dict:
    """What the chat UI checks before sending (the server checks them again)."""
    g = ctx.config.generation
    return {"max_prompt_chars": ctx.config.server.max_prompt_chars,
            "max_tokens_default": g.max_tokens_default, "max_tokens_limit": g.max_tokens_limit,
            "min_new_events": ctx.config.training.min_new_events,
            "rl_steps": ctx.config.training.steps}


@post("/me/rotate-key", status_code=200)
async def rotate_key(user: dict, ctx: AppState) -> dict:
    return {"id": user["id"], "api_key": await ctx.store.write(users.rotate_key, user["id"])}


@get("/me/export")
async def export(user: dict, ctx: AppState) -> dict:
    return await ctx.store.read(_snapshot, export_user, user["id"])


@get("/me/settings")
async def get_settings(user: dict, ctx: AppState) -> dict:
    return await ctx.store.read(read_settings, user["id"])


@put("/me/settings")
async def put_settings(data: SettingsBody, user: dict, ctx: AppState) -> dict:
    return await ctx.store.write(save_settings, user["id"], check_settings(parse(SettingsIn, data)))


@delete("/me", status_code=200)
async def erase_me(user: dict, ctx: AppState) -> dict:
    return await erase_user(ctx, user["id"])


me_router = Router(
    path="/api",
    route_handlers=[me, rotate_key, export, get_settings, put_settings, erase_me],
    dependencies={"user": Provide(current_user)},
)
