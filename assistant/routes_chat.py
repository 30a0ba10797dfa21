"""Native chat API: /api/chat and conversations."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from litestar import Response, Router, delete, get, post
from litestar.di import Provide
from litestar.params import FromPath
from litestar.response import Stream

from assistant.api_docs import ChatBody
from assistant.auth import current_user
from assistant.chat import (
    PreparedTurn,
    check_flag,
    check_turn,
    prepare_turn,
    run_turn,
    stream_turn,
)
from assistant.engine import Delta
from assistant.http_errors import status_of
from assistant.state import AppState
from assistant.user_settings import answer_tokens, read_settings
from feedback_store import conversations as conv
from feedback_store.errors import AssistantError, public_message

log = logging.getLogger("assistant")


def sse(event: str, payload: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n".encode()


@post("/chat", status_code=200)
async def chat(data: ChatBody, user: dict, ctx: AppState) -> Response:
    req = check_turn(ctx, data)
    if data.get("max_tokens") is None:         # the user's answer length, unless asked
        length = (await ctx.store.read(read_settings, user["id"]))["answer_length"]
        req.max_tokens = answer_tokens(length, ctx.config.generation)
    if check_flag(data, "stream"):
        prep = await prepare_turn(ctx, user, req)
        return Stream(_chat_events(ctx, prep, req.regenerate is not None),
                      media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    prep, candidates = await run_turn(ctx, user, req)
    return Response({"conversation_id": prep.conversation_id, "message": prep.user_turn,
                     "candidates": candidates, **prep.served()})


async def _chat_events(ctx: AppState, prep: PreparedTurn,
                       regenerate: bool) -> AsyncIterator[bytes]:
    yield sse("start", {"conversation_id": prep.conversation_id, "message": prep.user_turn,
                        "n": prep.gen.n, "model": prep.model})
    try:
        async for item in stream_turn(ctx, prep, regenerate):
            if isinstance(item, Delta):
                yield sse("delta", {"index": item.index, "text": item.text})
            else:
                yield sse("done", {"conversation_id": prep.conversation_id,
                                   "message": prep.user_turn, "candidates": item,
                                   **prep.served()})
    except Exception as exc:   # headers are sent: the status goes in an error event
        yield sse("error", stream_error(exc, "streamed chat"))


def stream_error(exc: Exception, what: str) -> dict:
    """The error event's payload: status and a message a client may see (an unexpected
    error is logged with its traceback and named by type only, as the app's handler does)."""
    status = status_of(exc)
    if not isinstance(exc, AssistantError):
        log.error("%s failed", what, exc_info=exc)
        return {"status": status, "detail": f"internal error: {type(exc).__name__}"}
    if status >= 500:
        log.error("%s failed: %s", what, exc)
    return {"status": status, "detail": public_message(exc), "field": exc.field}


@get("/conversations")
async def list_conversations(user: dict, ctx: AppState) -> list[dict]:
    return await ctx.store.read(conv.list_conversations, user["id"])


@get("/conversations/{conversation_id:int}")
async def get_conversation(conversation_id: FromPath[int], user: dict, ctx: AppState) -> dict:
    return await ctx.store.read(conv.conversation_detail, user["id"], conversation_id)


@delete("/conversations/{conversation_id:int}")
async def delete_conversation(conversation_id: FromPath[int], user: dict, ctx: AppState) -> None:
    await ctx.store.write(conv.delete_conversation, user["id"], conversation_id)


chat_router = Router(
    path="/api",
    route_handlers=[chat, list_conversations, get_conversation, delete_conversation],
    dependencies={"user": Provide(current_user)},
)
