"""Feedback API: thumbs, pairwise comparisons, rankings, the rating guidelines, one message."""

from __future__ import annotations

from collections.abc import Iterable

from litestar import Router, delete, get, post, put
from litestar.di import Provide
from litestar.params import FromPath

from assistant.api_docs import ComparisonBody, RankingBody, ThumbsBody
from assistant.auth import current_user
from assistant.bodies import ComparisonIn, RankingIn, ThumbsIn, parse
from assistant.rewards import message_reward
from assistant.state import AppState
from feedback_store import feedback as fb


def _notes(body: ThumbsIn | ComparisonIn,
           vocabulary: Iterable[str]) -> tuple[list[str], str | None]:
    return fb.check_reasons(body.reasons, vocabulary), fb.check_comment(body.comment)


@get("/guidelines")
async def guidelines(user: dict, ctx: AppState) -> dict:
    f = ctx.config.feedback
    return {"criterion": f.criterion, "guidelines": f.guidelines.strip(),
            "reasons_up": list(f.reasons_up), "reasons_down": list(f.reasons_down),
            "compare_every": f.compare_every}


@get("/messages/{message_id:int}")
async def get_message(message_id: FromPath[int], user: dict, ctx: AppState) -> dict:
    view = await ctx.store.read(fb.message_view, user["id"], message_id)
    view["reward"] = await message_reward(ctx, user["id"], view)
    return view


@put("/messages/{message_id:int}/thumbs")
async def put_thumbs(message_id: FromPath[int], data: ThumbsBody, user: dict,
                     ctx: AppState) -> dict:
    body = parse(ThumbsIn, data)
    value = fb.check_thumb_value(body.value)
    # An up vote takes the "up" reasons and a down vote the "down" ones: a down vote
    # "because helpful" would teach the reward model the opposite of what was meant.
    f = ctx.config.feedback
    reasons, comment = _notes(body, f.reasons_up if value == "up" else f.reasons_down)
    return await ctx.store.write(fb.set_thumbs, user["id"], message_id, value, reasons, comment)


@delete("/messages/{message_id:int}/thumbs")
async def delete_thumbs(message_id: FromPath[int], user: dict, ctx: AppState) -> None:
    await ctx.store.write(fb.clear_thumbs, user["id"], message_id)


@post("/comparisons", status_code=200)
async def post_comparison(data: ComparisonBody, user: dict, ctx: AppState) -> dict:
    body = parse(ComparisonIn, data)
    reasons, comment = _notes(body, ctx.config.feedback.reasons)
    return await ctx.store.write(fb.compare, user["id"], body.message_ids, body.choice,
                                 reasons, comment)


@post("/rankings", status_code=200)
async def post_ranking(data: RankingBody, user: dict, ctx: AppState) -> dict:
    return await ctx.store.write(fb.rank, user["id"], parse(RankingIn, data).message_ids)


feedback_router = Router(
    path="/api",
    route_handlers=[guidelines, get_message, put_thumbs, delete_thumbs, post_comparison,
                    post_ranking],
    dependencies={"user": Provide(current_user)},
)
