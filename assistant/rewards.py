"""Reward scores in the product: a user's latest reward head applied to their messages."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from adapters.feature_cache import cached_features, features_id, store_features
from adapters.features import compute_features
from adapters.reward_head import RewardHead, latest_published
from assistant.state import AppState
from feedback_store import conversations as conv
from feedback_store.sql import Database

SUMMARY_FIELDS = ("cv_accuracy", "n_pairs", "n_thumbs", "prior")


def latest_head(db: Database, user_id: int, base_id: str) -> dict | None:
    """The user's newest published head made for this base and feature recipe (a head is
    meaningless on other features; an unpublished one belongs to an unfinished run)."""
    return latest_published(db, user_id, features_id(base_id))


def head_summary(db: Database, user_id: int, base_id: str) -> dict | None:
    """What /api/me shows: version, when, cross-validated accuracy, what it was fitted on."""
    row = latest_head(db, user_id, base_id)
    if row is None:
        return None
    metrics = json.loads(row["metrics"] or "{}")
    return {"version": row["version"], "created_at": row["created_at"],
            **{k: metrics.get(k) for k in SUMMARY_FIELDS}}


@lru_cache(maxsize=32)
def _load(path: str) -> RewardHead:
    return RewardHead.load(Path(path))


async def message_reward(ctx: AppState, user_id: int, message: dict) -> float | None:
    """The owner's reward for an assistant message, once they have a head; else None.

    Features are normally cached by training; a message never seen by training gets its
    vector computed once here, on the generation thread (one short forward pass).
    """
    base_id = ctx.engine.base_id
    head = await ctx.store.read(latest_head, user_id, base_id)
    if head is None or message["role"] != "assistant":
        return None
    found = await ctx.store.read(cached_features, [message["id"]], base_id)
    vector = found.get(message["id"])
    if vector is None:
        prompt = await ctx.store.read(conv.prompt_messages, message["conversation_id"],
                                      message["candidate_group"])
        X = await ctx.engine.call(compute_features, ctx.engine.model, ctx.engine.tokenizer,
                                  [(prompt, message["content"])])
        vector = X[0]
        await ctx.store.write(store_features, {message["id"]: vector}, base_id)
    return float(_load(head["path"]).score(vector[None, :])[0])
