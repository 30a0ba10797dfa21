"""Bearer-key authentication and the admin guard, as Litestar dependencies."""

from __future__ import annotations

import hmac

from litestar import Request

from assistant.state import AppState
from feedback_store.errors import Forbidden, Unauthorized
from feedback_store.users import get_user, user_for_key


def bearer_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    return key.strip()


async def current_user(request: Request) -> dict:
    state: AppState = request.app.state.assistant
    key = bearer_key(request)
    admin_key = state.config.server.admin_key
    if admin_key and state.admin_user_id and hmac.compare_digest(key, admin_key):
        return await state.store.read(get_user, state.admin_user_id)
    user = await state.store.read(user_for_key, key)
    if user is None:
        raise Unauthorized("invalid or revoked API key")
    return user


async def admin_user(request: Request) -> dict:
    user = await current_user(request)
    if user["role"] != "admin":
        raise Forbidden("this action needs the admin role")
    return user
