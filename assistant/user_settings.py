"""The settings a user keeps on the server (GET/PUT /api/me/settings): which exist, their
defaults and valid values, and what the chat makes of them.

answer_length: how long answers may be when a chat request does not give max_tokens. Each
length is a share of [generation] max_tokens_default ("normal" is exactly that default), so
an operator who changes the default moves every length with it.
"""

from __future__ import annotations

from typing import Any

from assistant.bodies import SettingsIn
from assistant.config import GenerationConfig
from feedback_store import user_settings as store
from feedback_store.errors import BadRequest
from feedback_store.sql import Database

ANSWER_LENGTHS = {"short": 0.5, "normal": 1.0, "long": 3.0}
DEFAULTS: dict[str, Any] = {"answer_length": "normal"}
MIN_TOKENS = 16          # a "short" answer still has room for a sentence


def check_settings(body: SettingsIn) -> dict[str, Any]:
    """The settings a PUT body sets (its fields typed by SettingsIn); at least one."""
    given = body.given()
    if not given:
        raise BadRequest(f"must set at least one of {', '.join(DEFAULTS)}", field="body")
    return given


def read_settings(db: Database, user_id: int) -> dict[str, Any]:
    """Every setting, the user's own value or the default."""
    return {**DEFAULTS, **{k: v for k, v in store.get_settings(db, user_id).items()
                           if k in DEFAULTS}}


def save_settings(db: Database, user_id: int, values: dict[str, Any]) -> dict[str, Any]:
    store.put_settings(db, user_id, values)
    return read_settings(db, user_id)


def answer_tokens(length: str, g: GenerationConfig) -> int:
    """max_tokens for an answer length, within [min(16, default), max_tokens_limit]."""
    tokens = round(g.max_tokens_default * ANSWER_LENGTHS.get(length, 1.0))
    return max(min(MIN_TOKENS, g.max_tokens_default), min(g.max_tokens_limit, tokens))
