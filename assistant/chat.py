"""One chat turn: store the user's message, route to their adapter, generate, store answers.

Shared by the native API (/api/chat) and the OpenAI-compatible API (/v1/chat/completions).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from assistant.engine import AdapterRef, Delta, GenRequest, GenResult
from assistant.explore_turn import EXPLORE_MODES, explore_turn, turn_mode
from assistant.state import AppState
from feedback_store import conversations as conv
from feedback_store.errors import BadRequest, TooLarge
from feedback_store.users import get_user

MODELS = ("personal", "base")


@dataclass
class TurnRequest:
    """A validated chat turn (ranges already checked against the config)."""

    content: str
    conversation_id: int | None = None
    regenerate: int | None = None        # a user turn id to answer again
    n: int = 1
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    model: str = "personal"
    system: str | None = None
    history: list[dict] | None = None    # OpenAI-style: prior turns supplied by the client
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    explore: str | None = None           # None = the server's [explore] setting


def check_turn(state: AppState, body: dict) -> TurnRequest:
    """Validate a chat request body, naming the offending field."""
    g, limit = state.config.generation, state.config.server.max_prompt_chars
    content = body.get("content")
    if body.get("regenerate") is None and (not isinstance(content, str) or not content.strip()):
        raise BadRequest("content: must be a non-empty string")
    if isinstance(content, str) and len(content) > limit:
        raise TooLarge(f"content: {len(content)} characters is over the limit of {limit}")
    n = _int_in(body, "n", 1, 1, g.n_max)
    max_tokens = _int_in(body, "max_tokens", g.max_tokens_default, 1, g.max_tokens_limit)
    temperature = _float_in(body, "temperature", g.temperature, 0.0, 2.0)
    top_p = _float_in(body, "top_p", g.top_p, 0.0, 1.0)
    model = body.get("model") or "personal"
    if model not in MODELS:
        raise BadRequest(f"model: must be one of {', '.join(MODELS)}; got {model!r}")
    return TurnRequest(content=content or "", conversation_id=_opt_int(body, "conversation_id"),
                       regenerate=_opt_int(body, "regenerate"), n=n, temperature=temperature,
                       top_p=top_p, max_tokens=max_tokens, stop=_stops(body.get("stop")),
                       model=model, explore=_explore_mode(body), **_sampling_extras(body))


def _explore_mode(body: dict) -> str | None:
    """'explore': true/false or a selection mode (assistant/explore_turn.EXPLORE_MODES)."""
    value = body.get("explore")
    if value is None or value is True:
        return None if value is None else "on"
    if value is False:
        return "off"
    if value not in EXPLORE_MODES:
        raise BadRequest(f"explore: must be true, false or one of {', '.join(EXPLORE_MODES)}; "
                         f"got {value!r}")
    return value


def _sampling_extras(body: dict) -> dict:
    """OpenAI's repetition penalties (its range, -2 to 2) and seed (a signed 64-bit integer,
    as OpenAI's; it is stored with each answer, and SQLite's integers are signed 64-bit)."""
    seed = _opt_int(body, "seed")
    if seed is not None and not -2**63 <= seed < 2**63:
        raise BadRequest(f"seed: must be a signed 64-bit integer; got {seed!r}")
    return {"frequency_penalty": _float_in(body, "frequency_penalty", 0.0, -2.0, 2.0),
            "presence_penalty": _float_in(body, "presence_penalty", 0.0, -2.0, 2.0),
            "seed": seed}


def _int_in(body: dict, name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{name}: must be an integer from {lo} to {hi}; got {value!r}")
    return value


def _float_in(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{name}: must be a number from {lo} to {hi}; got {value!r}")
    return float(value)


def _opt_int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise BadRequest(f"{name}: must be an integer; got {value!r}")
    return value


def _stops(value: object) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise BadRequest("stop: must be a string or a list of at most 4 strings")
    return stops


@dataclass
class PreparedTurn:
    conversation_id: int
    user_turn: dict
    gen: GenRequest
    model: str
    explore: str | None = None           # the selection mode when this turn explores
    user: dict | None = None             # the caller (fresh row), for an exploring turn


def adapter_for(db, adapters_root, user: dict, model: str) -> AdapterRef | None:
    """The adapter a request is routed through: the user's current version, or none."""
    if model == "base" or not user.get("current_version"):
        return None
    rows = list(db["adapter_versions"].rows_where(
        "user_id = ? and version = ?", [user["id"], user["current_version"]]))
    if not rows:
        return None
    return AdapterRef(user["id"], user["current_version"], adapters_root / rows[0]["path"])


def _prepare(db, user: dict, req: TurnRequest, adapters_root) -> tuple[int, dict, list[dict]]:
    """Store the user turn (or find the one to regenerate) and build the prompt messages."""
    if req.regenerate is not None:
        turn = conv.get_message(db, user["id"], req.regenerate)
        if turn["role"] != "user":
            raise BadRequest(f"regenerate: message {req.regenerate} is not a user turn")
        conv_id = turn["conversation_id"]
    else:
        conv_id = req.conversation_id
        if conv_id is None:
            conv_id = conv.create_conversation(db, user["id"], req.content, req.system)
            conv.add_history(db, user["id"], conv_id, req.history or [])
        else:
            conv.get_conversation_row(db, user["id"], conv_id)
        turn = conv.add_user_turn(db, user["id"], conv_id, req.content)
    row = conv.get_conversation_row(db, user["id"], conv_id)
    messages = [{"role": m["role"], "content": m["content"]}
                for m in conv.history(db, conv_id, turn["id"])]
    if row.get("system"):
        messages.insert(0, {"role": "system", "content": row["system"]})
    return conv_id, turn, messages


async def prepare_turn(state: AppState, user: dict, req: TurnRequest) -> PreparedTurn:
    conv_id, turn, messages = await state.store.write(_prepare, user, req, state.adapters_root)
    fresh = await state.store.read(get_user, user["id"])   # current_version may have moved
    adapter = await state.store.read(adapter_for, state.adapters_root, fresh, req.model)
    gen = GenRequest(messages=messages, n=req.n, temperature=req.temperature, top_p=req.top_p,
                     max_tokens=req.max_tokens, stop=req.stop, adapter=adapter,
                     frequency_penalty=req.frequency_penalty,
                     presence_penalty=req.presence_penalty, seed=req.seed)
    explore = turn_mode(state, req.explore, req.n, req.model, req.regenerate is not None)
    return PreparedTurn(conv_id, turn, gen, "personal" if adapter else "base", explore, fresh)


def candidate_rows(prep: PreparedTurn, result: GenResult) -> list[dict]:
    gen = prep.gen
    return [{
        "content": c.text, "model": prep.model,
        "adapter_version": result.adapter.version if result.adapter else None,
        "temperature": gen.temperature, "top_p": gen.top_p, "max_tokens": gen.max_tokens,
        "frequency_penalty": gen.frequency_penalty, "presence_penalty": gen.presence_penalty,
        "seed": gen.seed, "source": "personal" if result.adapter else "base",
        "prompt_tokens": result.prompt_tokens, "completion_tokens": len(c.tokens),
        "first_token_ms": c.first_token_ms, "total_ms": c.total_ms,
        "finish_reason": c.finish_reason,
    } for c in result.candidates]


def _store_candidates(db, turn: dict, rows: list[dict], regenerate: bool) -> list[dict]:
    if regenerate:
        offset = len(conv.candidates_of(db, turn["id"]))
        for i, row in enumerate(rows):
            row["candidate_index"] = offset + i
    stored = conv.add_candidates(db, turn, rows)
    if regenerate and stored:
        conv.choose_candidate(db, stored[0])
        stored = [db["messages"].get(m["id"]) for m in stored]
    return stored


async def store_result(state: AppState, prep: PreparedTurn, result: GenResult,
                       regenerate: bool = False) -> list[dict]:
    return await state.store.write(_store_candidates, prep.user_turn,
                                   candidate_rows(prep, result), regenerate)


async def run_turn(state: AppState, user: dict, req: TurnRequest) -> tuple[PreparedTurn, list]:
    """Non-streaming turn: returns the prepared turn and the stored candidates."""
    prep = await prepare_turn(state, user, req)
    if prep.explore:
        return prep, await explore_turn(state, user, prep, prep.explore)
    result = await state.engine.generate(prep.gen)
    return prep, await store_result(state, prep, result, req.regenerate is not None)


async def stream_turn(state: AppState, prep: PreparedTurn,
                      regenerate: bool = False) -> AsyncIterator[Delta | list[dict]]:
    """Yield Deltas, then the stored candidate rows. If the consumer stops early the engine
    is cancelled and whatever was generated is still stored (finish_reason 'cancelled').

    An exploring turn cannot stream: which candidates are shown is known only once the whole
    pool is generated, so each shown answer arrives as one delta."""
    if prep.explore:
        stored = await explore_turn(state, prep.user, prep, prep.explore)
        for i, row in enumerate(stored):
            yield Delta(i, row["content"])
        yield stored
        return

    async def keep_partial(partial: GenResult) -> None:
        await store_result(state, prep, partial, regenerate)

    result = None
    stream = state.engine.stream(prep.gen, on_abandon=keep_partial)
    try:
        async for item in stream:
            if isinstance(item, GenResult):
                result = item
            else:
                yield item
    finally:
        await stream.aclose()
    if result is not None:
        yield await store_result(state, prep, result, regenerate)
