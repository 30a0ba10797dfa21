"""Data the web UI needs beyond the core APIs: what the assistant learned (/api/me/insights,
side-by-side examples), verdicts and titles of a conversation, per-user feedback counts for
admins, and the favicon."""

from __future__ import annotations

import asyncio
from pathlib import Path

from litestar import Response, Router, get, post, put
from litestar.di import Provide
from litestar.params import FromPath

from assistant import insights
from assistant.api_docs import TitleBody
from assistant.auth import admin_user, current_user
from assistant.bodies import TitleIn, parse
from assistant.chat import adapter_for
from assistant.engine import GenRequest
from assistant.state import AppState
from feedback_store import conversations as conv
from feedback_store import feedback as fb
from feedback_store.users import get_user

FAVICON = Path(__file__).parent / "static" / "favicon.svg"
EXAMPLES = insights.ExampleSettings()
# (user id, version) -> examples: a version's answers to the same prompts do not change
# (greedy decoding), so each is generated once per server process.
_examples_cache: dict[str, dict] = {}
_examples_lock = asyncio.Lock()


@get("/me/insights")
async def my_insights(user: dict, ctx: AppState) -> dict:
    return await ctx.store.read(insights.insights, user["id"], ctx.engine.base_id,
                                ctx.config.training.min_new_events)


async def _answer(ctx: AppState, prompt: list[dict], adapter) -> str:
    req = GenRequest(messages=prompt, n=1, temperature=0.0, top_p=1.0,
                     max_tokens=EXAMPLES.max_tokens, adapter=adapter)
    result = await ctx.engine.generate(req)
    return result.candidates[0].text


async def _examples(ctx: AppState, user: dict) -> dict:
    adapter = await ctx.store.read(adapter_for, ctx.adapters_dir, user, "personal")
    if adapter is None:
        return {"version": None, "examples": [],
                "reason": "You have no personal version yet: the base model answers you."}
    prompts = await ctx.store.read(insights.example_prompts, user["id"], EXAMPLES)
    # Base and personal rows go to the engine together: it decodes them as one mixed batch.
    texts = await asyncio.gather(*(_answer(ctx, p, a) for p in prompts for a in (None, adapter)))
    return {"version": adapter.version, "max_tokens": EXAMPLES.max_tokens, "examples": [
        {"prompt": p[-1]["content"], "base": texts[2 * i], "mine": texts[2 * i + 1]}
        for i, p in enumerate(prompts)]}


@post("/me/examples", status_code=200)
async def my_examples(user: dict, ctx: AppState) -> dict:
    """The same prompts (the user's own) answered by the base and by their version, greedily."""
    fresh = await ctx.store.read(get_user, user["id"])
    key = insights.cache_key(fresh)
    async with _examples_lock:           # one batch at a time: a double click costs nothing
        if key not in _examples_cache:
            _examples_cache[key] = await _examples(ctx, fresh)
    return _examples_cache[key]


@get("/conversations/{conversation_id:int}/verdicts")
async def verdicts(conversation_id: FromPath[int], user: dict, ctx: AppState) -> list[dict]:
    return await ctx.store.read(fb.verdicts_in_conversation, user["id"], conversation_id)


@put("/conversations/{conversation_id:int}/title")
async def rename(conversation_id: FromPath[int], data: TitleBody, user: dict,
                 ctx: AppState) -> dict:
    return await ctx.store.write(conv.rename_conversation, user["id"], conversation_id,
                                 parse(TitleIn, data).title)


@get("/feedback-counts")
async def feedback_counts(admin: dict, ctx: AppState) -> dict[str, dict]:
    counts = await ctx.store.read(fb.counts_by_user)
    return {str(k): v for k, v in counts.items()}


@get("/favicon.ico", include_in_schema=False, sync_to_thread=False)
def favicon() -> Response:
    return Response(FAVICON.read_bytes(), media_type="image/svg+xml",
                    headers={"Cache-Control": "public, max-age=86400"})


insights_router = Router(path="/", route_handlers=[
    favicon,
    Router(path="/api", route_handlers=[my_insights, my_examples, verdicts, rename],
           dependencies={"user": Provide(current_user)}),
    Router(path="/admin", route_handlers=[feedback_counts],
           dependencies={"admin": Provide(admin_user)}),
])
