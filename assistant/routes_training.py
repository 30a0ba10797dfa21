"""Training triggers and history: admin /admin/train, runs, rollback; a user's own runs."""

from __future__ import annotations

from litestar import Router, get, post
from litestar.di import Provide
from litestar.params import FromPath

from assistant.api_docs import RollbackBody, TrainBody
from assistant.auth import admin_user, current_user
from assistant.bodies import RollbackIn, TrainIn, parse
from assistant.state import AppState
from feedback_store import runs
from feedback_store.users import get_user


@post("/train", status_code=202)
async def train(data: TrainBody, admin: dict, ctx: AppState) -> dict:
    body = parse(TrainIn, data)
    queued = await ctx.store.write(runs.request_training, body.user, body.force,
                                   ctx.config.training.min_new_events, admin["name"])
    if ctx.scheduler is not None:
        ctx.scheduler.kick()
    return {"queued": queued}


@get("/runs")
async def list_runs(admin: dict, ctx: AppState, user_id: int | None = None) -> list[dict]:
    return await ctx.store.read(runs.list_runs, user_id)


@get("/runs/{run_id:int}")
async def get_run(run_id: FromPath[int], admin: dict, ctx: AppState) -> dict:
    return await ctx.store.read(runs.get_run, run_id)


@post("/users/{user_id:int}/rollback", status_code=200)
async def rollback(user_id: FromPath[int], data: RollbackBody, admin: dict, ctx: AppState) -> dict:
    from adapters import registry

    await ctx.store.write(registry.rollback, user_id, parse(RollbackIn, data).version)
    return await ctx.store.read(get_user, user_id)


@get("/users/{user_id:int}/versions")
async def versions(user_id: FromPath[int], admin: dict, ctx: AppState) -> list[dict]:
    from adapters import registry

    await ctx.store.read(get_user, user_id)
    return await ctx.store.read(registry.list_versions, user_id)


@get("/me/runs")
async def my_runs(user: dict, ctx: AppState) -> list[dict]:
    """The caller's own training history (log tails are admin-only detail)."""
    rows = await ctx.store.read(runs.list_runs, user["id"])
    return [{k: v for k, v in r.items() if k not in {"log_tail", "pid"}} for r in rows]


training_router = Router(path="/", route_handlers=[
    Router(path="/admin", route_handlers=[train, list_runs, get_run, rollback, versions],
           dependencies={"admin": Provide(admin_user)}),
    Router(path="/api", route_handlers=[my_runs], dependencies={"user": Provide(current_user)}),
])
