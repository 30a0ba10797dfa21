"""OpenAI-compatible API: /v1/chat/completions and /v1/models.

A completion is an ordinary chat turn (assistant.chat): the request maps onto a TurnRequest,
so it is stored as a conversation and every choice as a message. Those ids come back as
extra fields (`conversation_id` on the completion, `message_id` on each choice) so a client
can send feedback about the answers it got; OpenAI clients keep unknown fields.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from litestar import Request, Response, Router, get, post
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response import Stream

from assistant.api_docs import CompletionBody
from assistant.auth import current_user
from assistant.chat import (
    MODELS,
    PreparedTurn,
    TurnRequest,
    check_flag,
    check_turn,
    prepare_turn,
    run_turn,
    stream_turn,
)
from assistant.config import ServerConfig
from assistant.engine import Delta
from assistant.http_errors import headers_of, status_of
from assistant.routes_chat import stream_error
from assistant.state import AppState
from feedback_store.errors import AssistantError, BadRequest, NotFound, TooLarge, public_message

log = logging.getLogger("assistant")
ROLES = ("system", "user", "assistant")
# Content-Type as a header: Litestar lets the handler's default (JSON) override Stream's
# media_type when a handler may return either.
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
ERROR_CODES = {401: "invalid_api_key", 403: "permission_denied", 404: "not_found",
               410: "gone", 413: "request_too_large", 429: "rate_limit_exceeded"}


# ---- request: OpenAI body -> TurnRequest -----------------------------------------------------

def check_completion(state: AppState, body: dict) -> TurnRequest:
    """Validate an OpenAI chat.completions body and map it onto one chat turn."""
    model = body.get("model")
    if not isinstance(model, str) or model not in MODELS:
        raise BadRequest(f"must be one of {', '.join(MODELS)}; got {model!r}", field="model")
    system, turns = split_messages(body.get("messages"), state.config.server)
    native = {name: body.get(name) for name in ("n", "temperature", "top_p", "stop", "seed",
                                                "frequency_penalty", "presence_penalty")}
    native.update(model=model, content=turns[-1]["content"], max_tokens=_max_tokens(body))
    req = check_turn(state, native)
    req.system, req.history = system, turns[:-1]
    return req


def _max_tokens(body: dict) -> object:
    # max_completion_tokens is OpenAI's newer name; it wins when both are sent.
    newer = body.get("max_completion_tokens")
    return newer if newer is not None else body.get("max_tokens")


def split_messages(messages: object, limits: ServerConfig) -> tuple[str | None, list[dict]]:
    """(system prompt, turns): an optional leading system message, then user / assistant
    turns alternating and ending with the user's, as a conversation is stored."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("must be a non-empty list of {role, content} objects", field="messages")
    if len(messages) > limits.max_messages:
        raise TooLarge(f"{len(messages)} messages is over the limit of "
                       f"{limits.max_messages} (server.max_messages)", field="messages")
    parsed = [_message(i, m, limits.max_prompt_chars) for i, m in enumerate(messages)]
    total = sum(len(m["content"]) for m in parsed)
    if total > limits.max_request_chars:
        raise TooLarge(f"{total} characters in all is over the limit of "
                       f"{limits.max_request_chars} (server.max_request_chars)", field="messages")
    has_system = parsed[0]["role"] == "system"
    turns = parsed[1:] if has_system else parsed
    for i, turn in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn["role"] != expected:
            raise BadRequest(f"expected {expected!r} here "
                             f"(system first, then user and assistant alternating); "
                             f"got {turn['role']!r}", field=f"messages[{i + has_system}].role")
    if not turns or turns[-1]["role"] != "user":
        raise BadRequest("the last message must be from the user", field="messages")
    return (parsed[0]["content"] or None) if has_system else None, turns


def _message(i: int, message: object, limit: int) -> dict:
    if not isinstance(message, dict):
        raise BadRequest("must be an object with role and content", field=f"messages[{i}]")
    role = message.get("role")
    role = "system" if role == "developer" else role      # OpenAI's newer name for system
    if role not in ROLES:
        raise BadRequest(f"must be one of {', '.join(ROLES)}; got {role!r}",
                         field=f"messages[{i}].role")
    content = _text(message.get("content"), f"messages[{i}].content")
    if role == "user" and not content.strip():
        raise BadRequest("must not be empty", field=f"messages[{i}].content")
    if len(content) > limit:
        raise TooLarge(f"{len(content)} characters is over "
                       f"the limit of {limit}", field=f"messages[{i}].content")
    return {"role": role, "content": content}


def _text(content: object, where: str) -> str:
    """A string, or OpenAI's list of content parts of which only text parts are served."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else None
    if not parts or not all(isinstance(p, dict) and p.get("type") == "text"
                            and isinstance(p.get("text"), str) for p in parts):
        raise BadRequest("must be a string or a list of "
                         '{"type": "text", "text": ...} parts', field=where)
    return "\n".join(p["text"] for p in parts)


def _stream_flags(body: dict) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream, options = check_flag(body, "stream"), body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise BadRequest("must be an object", field="stream_options")
    return stream, check_flag(options, "include_usage", "stream_options.include_usage")


# ---- response: stored turn -> OpenAI shapes ---------------------------------------------------

def _finish(reason: str | None) -> str:
    # A cancelled answer stopped early on purpose; OpenAI has no value for that.
    return "length" if reason == "length" else "stop"


def usage(stored: list[dict]) -> dict:
    """Prompt counted once (all choices share it), completions summed, as OpenAI does."""
    prompt = (stored[0]["prompt_tokens"] or 0) if stored else 0
    completion = sum(m["completion_tokens"] or 0 for m in stored)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _envelope(prep: PreparedTurn, kind: str, created: int) -> dict:
    return {"id": f"chatcmpl-{prep.user_turn['id']}", "object": kind, "created": created,
            "model": prep.model, "conversation_id": prep.conversation_id}


def completion_body(prep: PreparedTurn, stored: list[dict]) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": m["content"]},
                "logprobs": None, "finish_reason": _finish(m["finish_reason"]),
                "message_id": m["id"]} for i, m in enumerate(stored)]
    return {**_envelope(prep, "chat.completion", int(time.time())), "choices": choices,
            "usage": usage(stored), **prep.served()}


class _Chunks:
    """Serializes chat.completion.chunk events of one streamed completion."""

    def __init__(self, prep: PreparedTurn) -> None:
        self.envelope = _envelope(prep, "chat.completion.chunk", int(time.time()))

    def choice(self, index: int, delta: dict, finish: str | None = None, **extra) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self.event({**self.envelope, "choices": [{**choice, **extra}]})

    def usage(self, stored: list[dict]) -> bytes:
        return self.event({**self.envelope, "choices": [], "usage": usage(stored)})

    @staticmethod
    def event(payload: dict) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()


async def completion_chunks(state: AppState, prep: PreparedTurn,
                            include_usage: bool) -> AsyncIterator[bytes]:
    chunks = _Chunks(prep)
    for index in range(prep.gen.n):
        yield chunks.choice(index, {"role": "assistant", "content": ""})
    stored: list[dict] = []
    try:
        # aclosing: a client that goes away cancels generation now, not at garbage collection.
        async with aclosing(stream_turn(state, prep)) as items:
            async for item in items:
                if isinstance(item, Delta):
                    yield chunks.choice(item.index, {"content": item.text})
                else:
                    stored = item
    except Exception as exc:       # headers are sent: report it the way OpenAI streams do
        error = stream_error(exc, "streamed completion")
        yield chunks.event(error_body(error["status"], error["detail"], error.get("field")))
        return
    for index, message in enumerate(stored):
        yield chunks.choice(index, {}, _finish(message["finish_reason"]),
                            message_id=message["id"], **prep.served())
    if include_usage:
        yield chunks.usage(stored)
    yield b"data: [DONE]\n\n"


def model_cards(state: AppState, user: dict) -> list[dict]:
    created = int(state.started)
    return [
        {"id": "personal", "object": "model", "created": created, "owned_by": user["name"],
         # None until this user's first adapter is promoted: "personal" then serves the base.
         "adapter_version": user.get("current_version"), "base_model": state.engine.base_id},
        {"id": "base", "object": "model", "created": created, "owned_by": "system",
         "base_model": state.engine.base_id},
    ]


# ---- errors: OpenAI's {"error": {...}} body, for /v1 only -------------------------------------

def error_body(status: int, message: str, param: str | None = None) -> dict:
    """OpenAI's error shape; param is the request field the error is about, if one is."""
    return {"error": {"message": message,
                      "type": "server_error" if status >= 500 else "invalid_request_error",
                      "param": param, "code": ERROR_CODES.get(status)}}


def handle_openai_error(request: Request, exc: Exception) -> Response:
    """The /v1 counterpart of the app's handlers: same statuses, OpenAI's body shape."""
    headers, param = None, None
    if isinstance(exc, AssistantError):
        status, message, headers = status_of(exc), public_message(exc), headers_of(exc)
        param = exc.field
    elif isinstance(exc, HTTPException):
        status, message, headers = exc.status_code, exc.detail, exc.headers
        if getattr(exc, "extra", None):
            message = f"{message}: {json.dumps(exc.extra, default=str)}"
    else:
        status, message = 500, f"internal error: {type(exc).__name__}"
    if status >= 500:
        log.error("%s %s failed: %r", request.method, request.url.path, exc, exc_info=exc)
    return Response(error_body(status, message, param), status_code=status, headers=headers)


# ---- handlers -------------------------------------------------------------------------------

@post("/chat/completions", status_code=200)
async def chat_completions(data: CompletionBody, user: dict, ctx: AppState) -> dict | Stream:
    req = check_completion(ctx, data)
    stream, include_usage = _stream_flags(data)
    if stream:
        prep = await prepare_turn(ctx, user, req)
        return Stream(completion_chunks(ctx, prep, include_usage), headers=SSE_HEADERS)
    prep, stored = await run_turn(ctx, user, req)
    return completion_body(prep, stored)


@get("/models")
async def list_models(user: dict, ctx: AppState) -> dict:
    return {"object": "list", "data": model_cards(ctx, user)}


@get("/models/{model_id:str}")
async def retrieve_model(model_id: FromPath[str], user: dict, ctx: AppState) -> dict:
    cards = {card["id"]: card for card in model_cards(ctx, user)}
    if model_id not in cards:
        raise NotFound(f"{model_id!r} not found; available: {', '.join(MODELS)}", field="model")
    return cards[model_id]


openai_router = Router(
    path="/v1",
    route_handlers=[chat_completions, list_models, retrieve_model],
    dependencies={"user": Provide(current_user)},
    exception_handlers={AssistantError: handle_openai_error, HTTPException: handle_openai_error,
                        Exception: handle_openai_error},
)
