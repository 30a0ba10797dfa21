"""Bearer-key authentication, the per-key rate limit and the admin guard, as Litestar
dependencies."""

from __future__ import annotations

import hmac

from litestar import Request

from assistant.state import AppState
from feedback_store.errors import Forbidden, Unauthorized
from feedback_store.users import get_user, hash_key, user_for_key


def bearer_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    return key.strip()


def is_admin_key(state: AppState, key: str) -> bool:
    """Constant-time comparison with ASSISTANT_ADMIN_KEY. On bytes: compare_digest refuses
    non-ASCII str (a TypeError, once a 500), and a header may carry any byte."""
    admin_key = state.config.server.admin_key
    return bool(admin_key and state.admin_user_id
                and hmac.compare_digest(key.encode(), admin_key.encode()))


async def authenticate(state: AppState, key: str) -> dict:
    """The user a key belongs to: the admin identity for ASSISTANT_ADMIN_KEY, else a stored
    key's owner; 401 otherwise."""
    if is_admin_key(state, key):
        return await state.store.read(get_user, state.admin_user_id)
    user = await state.store.read(user_for_key, key)
    if user is None:
        raise Unauthorized("invalid or revoked API key")
    return user


async def current_user(request: Request) -> dict:
    state: AppState = request.app.state.assistant
    key = bearer_key(request)
    user = await authenticate(state, key)
    state.rate_limiter.charge(hash_key(key))     # after auth: only real keys get a bucket
    return user


async def admin_user(request: Request) -> dict:
    user = await current_user(request)
    if user["role"] != "admin":
        raise Forbidden("this action needs the admin role")
    return user


async def is_admin_request(request: Request) -> bool:
    """True when the request carries a valid admin key (for optional admin-only detail);
    never raises: no key or a wrong one just means "not admin"."""
    state: AppState = request.app.state.assistant
    try:
        user = await authenticate(state, bearer_key(request))
    except Unauthorized:
        return False
    return user["role"] == "admin"
