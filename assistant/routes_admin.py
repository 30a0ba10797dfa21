"""Admin API: users and their keys (admin role only)."""

from __future__ import annotations

import re

from litestar import Response, Router, delete, get, post
from litestar.di import Provide
from litestar.params import FromPath, Parameter

from assistant.api_docs import NewUserBody
from assistant.auth import admin_user
from assistant.bodies import NewUserIn, parse
from assistant.erase import erase_user
from assistant.state import AppState
from feedback_store import users
from feedback_store.training_data import export_jsonl


@post("/users", status_code=201)
async def create_user(data: NewUserBody, admin: dict, ctx: AppState) -> dict:
    body = parse(NewUserIn, data)
    user, key = await ctx.store.write(users.create_user, body.name, body.admin)
    return {"id": user["id"], "name": user["name"], "role": user["role"], "api_key": key}


@get("/users")
async def list_users(admin: dict, ctx: AppState) -> list[dict]:
    """Every user, with the adapter versions that failed to load for them in this process
    (their chats are then served by an earlier version or the base)."""
    rows = await ctx.store.read(users.list_users)
    return [{**u, "adapter_failures": ctx.adapter_failures.for_user(u["id"])} for u in rows]


@post("/users/{user_id:int}/rotate-key", status_code=200)
async def rotate_key(user_id: FromPath[int], admin: dict, ctx: AppState) -> dict:
    key = await ctx.store.write(users.rotate_key, user_id)
    return {"id": user_id, "api_key": key}


@post("/users/{user_id:int}/revoke-keys", status_code=200)
async def revoke_keys(user_id: FromPath[int], admin: dict, ctx: AppState) -> dict:
    await ctx.store.read(users.get_user, user_id)
    revoked = await ctx.store.write(users.revoke_keys, user_id)
    return {"id": user_id, "revoked": revoked}


@delete("/users/{user_id:int}", status_code=200)
async def delete_user(user_id: FromPath[int], admin: dict, ctx: AppState) -> dict:
    return await erase_user(ctx, user_id)


@get("/export")
async def export(admin: dict, ctx: AppState, name: str = Parameter(query="user"),
                 fmt: str = Parameter(query="format")) -> Response:
    body = await ctx.store.read(export_jsonl, name, fmt)
    # The name went through check_name, but a database made before names were checked to
    # their end may hold one with a newline: the header must stay legal whatever it is.
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{name}-{fmt}")
    return Response(body, media_type="application/jsonl", headers={
        "Content-Disposition": f'attachment; filename="{safe}.jsonl"'})


admin_router = Router(
    path="/admin",
    route_handlers=[create_user, list_users, rotate_key, revoke_keys, delete_user, export],
    dependencies={"admin": Provide(admin_user)},
)
