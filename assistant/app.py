"""The Litestar application: routers, the one error handler, health, the web UI."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import MutableScopeHeaders
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.serialization import encode_json
from litestar.static_files import create_static_files_router
from litestar.types import Message, Scope

from assistant.auth import is_admin_request
from assistant.config import Config
from assistant.engine import Engine
from assistant.http_errors import headers_of, status_of
from assistant.ids import check_request_ids, document_id_ranges
from assistant.routes_admin import admin_router
from assistant.routes_chat import chat_router
from assistant.routes_feedback import feedback_router
from assistant.routes_insights import insights_router
from assistant.routes_me import me_router
from assistant.routes_openai import openai_router
from assistant.routes_training import training_router
from assistant.scheduler import training_scheduler
from assistant.state import AppState
from feedback_store.db import Store
from feedback_store.errors import AssistantError, public_message
from feedback_store.users import create_user, list_users

log = logging.getLogger("assistant")
STATIC = Path(__file__).parent / "static"

# Sent with every answer. The web UI (assistant/static) loads only its own scripts and
# styles, talks only to this origin and is never meant to be framed, so the policy can be
# strict: no inline script or style, no plugins, no <base> or form targets elsewhere.
# img-src allows data: for nothing but the browser's own favicon fallbacks.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",                  # frame-ancestors for older browsers
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",           # conversation ids never leak in Referer
    "cross-origin-opener-policy": "same-origin",
}


async def add_security_headers(message: Message, scope: Scope) -> None:
    """before_send hook: every HTTP answer (errors, streams, static files) gets the headers."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        for name, value in SECURITY_HEADERS.items():
            headers[name] = value


def handle_assistant_error(request: Request, exc: AssistantError) -> Response:
    """The one place our errors become HTTP: status from the class, message as detail
    (filesystem paths redacted: they tell a client nothing and an attacker too much)."""
    status = status_of(exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    body = {"detail": public_message(exc)}
    if exc.field:
        body["field"] = exc.field
    return Response(body, status_code=status, headers=headers_of(exc))


def handle_http_error(request: Request, exc: HTTPException) -> Response:
    """Litestar's own 4xx (malformed JSON, wrong types): keep its detail and field info."""
    body: dict[str, object] = {"detail": exc.detail}
    if getattr(exc, "extra", None):
        body["errors"] = exc.extra
    return Response(body, status_code=exc.status_code, headers=exc.headers)


def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


@get("/health")
async def health(request: Request, ctx: AppState) -> dict:
    """Liveness for anyone; which adapters are loaded (user ids) and which failed to load
    only for the admin."""
    body = {"status": "ok", "base_model": ctx.engine.base_id,
            "uptime_seconds": round(time.time() - ctx.started, 1)}
    if await is_admin_request(request):
        body["adapter_cache"] = ctx.engine.health()
        body["adapter_failures"] = ctx.adapter_failures.report()
    return body


@get("/", media_type=MediaType.HTML, sync_to_thread=False, include_in_schema=False)
def index() -> str:
    return (STATIC / "index.html").read_text()


def ensure_admin_identity(store: Store, config: Config) -> int | None:
    """The user that ASSISTANT_ADMIN_KEY acts as: the first admin (created if none)."""
    if not config.server.admin_key:
        return None

    def pick(db) -> int:
        admins = [u for u in list_users(db) if u["role"] == "admin"]
        if admins:
            return admins[0]["id"]
        return create_user(db, "admin", admin=True)[0]["id"]

    return store.write_sync(pick)


def route_handlers() -> list:
    return [health, index, chat_router, admin_router, openai_router, feedback_router,
            me_router, training_router, insights_router,
            create_static_files_router(path="/static", directories=[STATIC])]


def openapi_document() -> dict:
    """The API's OpenAPI document without a running server (it depends on the routes only)."""
    app = Litestar(route_handlers=route_handlers(),
                   dependencies={"ctx": Provide(lambda: None, sync_to_thread=False)})
    document_id_ranges(app.openapi_schema)
    schema = app.openapi_schema.to_schema()
    return json.loads(encode_json(schema))      # plain JSON types (a default is a Path)


def create_app(config: Config, engine: Engine, store: Store | None = None) -> Litestar:
    store = store or Store(config.store_target)
    state = AppState(config=config, store=store, engine=engine)
    state.admin_user_id = ensure_admin_identity(store, config)
    state.scheduler = training_scheduler(config, store)

    def shutdown() -> None:
        if state.scheduler is not None:
            state.scheduler.shutdown()
        store.close()

    app = Litestar(
        route_handlers=route_handlers(),
        dependencies={"ctx": Provide(lambda: state, sync_to_thread=False)},
        exception_handlers={AssistantError: handle_assistant_error,
                            HTTPException: handle_http_error, Exception: handle_unexpected},
        before_request=check_request_ids,
        before_send=[add_security_headers],
        on_startup=[state.scheduler.start],
        on_shutdown=[shutdown],
        debug=False,
    )
    app.state.assistant = state
    document_id_ranges(app.openapi_schema)
    return app

