"""One chat turn: store the user's message, route to their adapter, generate, store answers.

Shared by the native API (/api/chat) and the OpenAI-compatible API (/v1/chat/completions).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from adapters import registry
from assistant import adapter_fallback as fallback
from assistant.engine import AdapterRef, Delta, GenRequest, GenResult
from assistant.explore_turn import EXPLORE_MODES, explore_turn, turn_mode
from assistant.ids import body_id
from assistant.state import AppState
from feedback_store import conversations as conv
from feedback_store.errors import BadRequest, Gone, ModelError, TooLarge, Unauthorized
from feedback_store.users import get_user, user_exists

MODELS = ("personal", "base")
log = logging.getLogger("assistant")


@dataclass
class TurnRequest:
    """A validated chat turn (ranges already checked against the config)."""

    content: str
    conversation_id: int | None = None
    regenerate: int | None = None        # a user turn id to answer again
    edit: int | None = None              # a user turn id this content replaces (a new branch)
    follow: int | None = None            # the answer id this turn follows (default: the chosen)
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
        raise BadRequest("must be a non-empty string", field="content")
    if isinstance(content, str) and len(content) > limit:
        raise TooLarge(f"{len(content)} characters is over the limit of {limit}", field="content")
    n = _int_in(body, "n", 1, 1, g.n_max)
    max_tokens = _int_in(body, "max_tokens", g.max_tokens_default, 1, g.max_tokens_limit)
    temperature = _float_in(body, "temperature", g.temperature, 0.0, 2.0)
    top_p = _float_in(body, "top_p", g.top_p, 0.0, 1.0)
    model = body.get("model")
    model = "personal" if model is None else model     # absent or null: the default
    if not isinstance(model, str) or model not in MODELS:
        raise BadRequest(f"must be one of {', '.join(MODELS)}; got {model!r}", field="model")
    return TurnRequest(content=content or "", conversation_id=body_id(body, "conversation_id"),
                       regenerate=body_id(body, "regenerate"), edit=body_id(body, "edit"),
                       follow=body_id(body, "follow"),
                       n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                       stop=_stops(body.get("stop")), model=model, explore=_explore_mode(body),
                       **_sampling_extras(body))


def _explore_mode(body: dict) -> str | None:
    """'explore': true/false or a selection mode (assistant/explore_turn.EXPLORE_MODES)."""
    value = body.get("explore")
    if value is None or value is True:
        return None if value is None else "on"
    if value is False:
        return "off"
    if value not in EXPLORE_MODES:
        raise BadRequest(f"must be true, false or one of {', '.join(EXPLORE_MODES)}; "
                         f"got {value!r}", field="explore")
    return value


def _sampling_extras(body: dict) -> dict:
    """OpenAI's repetition penalties (its range, -2 to 2) and seed (a signed 64-bit integer,
    as OpenAI's; it is stored with each answer, and SQLite's integers are signed 64-bit)."""
    seed = _opt_int(body, "seed")
    if seed is not None and not -2**63 <= seed < 2**63:
        raise BadRequest(f"must be a signed 64-bit integer; got {seed!r}", field="seed")
    return {"frequency_penalty": _float_in(body, "frequency_penalty", 0.0, -2.0, 2.0),
            "presence_penalty": _float_in(body, "presence_penalty", 0.0, -2.0, 2.0),
            "seed": seed}


def _int_in(body: dict, name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"must be an integer from {lo} to {hi}; got {value!r}", field=name)
    return value


def _float_in(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"must be a number from {lo} to {hi}; got {value!r}", field=name)
    return float(value)


def _opt_int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise BadRequest(f"must be an integer; got {value!r}", field=name)
    return value


def _stops(value: object) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise BadRequest("must be a string or a list of at most 4 strings", field="stop")
    return stops


def check_flag(body: dict, name: str, where: str | None = None) -> bool:
    """An optional boolean field ("stream"): absent or null is false, anything else but a
    boolean is a 400 (a string "false" would otherwise be truthy)."""
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"must be true or false; got {value!r}", field=where or name)
    return value


def trim_prompt(messages: list[dict], max_messages: int, max_chars: int) -> list[dict]:
    """A stored conversation's prompt within the request caps: a leading system message and
    the last turn are kept, the oldest turns between them dropped (the engine would drop
    them anyway to fit its context; this bounds the work of getting there)."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    budget = max_chars - sum(len(m["content"]) for m in system)
    keep = 0
    for m in reversed(turns):
        budget -= len(m["content"])
        if keep and (budget < 0 or keep + len(system) >= max_messages):
            break
        keep += 1
    kept = turns[len(turns) - keep:]
    if len(kept) > 1 and kept[0]["role"] == "assistant":
        kept = kept[1:]                 # a conversation starts with the user
    return system + kept


@dataclass
class PreparedTurn:
    conversation_id: int
    user_turn: dict
    gen: GenRequest
    model: str
    user: dict                           # the caller (their row as this turn began)
    explore: str | None = None           # the selection mode when this turn explores
    fallback_from: int | None = None    # the adapter version that failed to load, if any

    @property
    def notice(self) -> str | None:
        return fallback.notice(self.fallback_from, self.gen.adapter)

    def served(self) -> dict:
        """What served the answer, for API responses: the adapter version actually used
        and, when that is a fallback, a notice saying so."""
        adapter = self.gen.adapter
        out: dict = {"adapter_version": adapter.version if adapter else None}
        if self.fallback_from is not None:
            out.update(adapter_fallback_from=self.fallback_from, notice=self.notice)
        return out


def adapter_for(db, adapters_dir, user: dict, model: str) -> AdapterRef | None:
    """The adapter a request is routed through: the user's current version, or none."""
    if model == "base" or not user.get("current_version"):
        return None
    row = registry.find_version(db, user["id"], user["current_version"])
    if row is None:
        return None
    return AdapterRef(user["id"], user["current_version"], adapters_dir / row["path"])


def _prepare(db, user: dict, req: TurnRequest) -> tuple[int, dict, list[dict]]:
    """Store the user turn (or find the one to regenerate) and build the prompt messages."""
    if not user_exists(db, user["id"]):
        raise Unauthorized("invalid or revoked API key")    # erased since the key was checked
    if req.regenerate is not None:
        turn = conv.get_message(db, user["id"], req.regenerate)
        if turn["role"] != "user":
            raise BadRequest(f"message {req.regenerate} is not a user turn", field="regenerate")
        conv_id = turn["conversation_id"]
    elif req.edit is not None:
        edited = conv.get_message(db, user["id"], req.edit)
        if edited["role"] != "user":
            raise BadRequest(f"message {req.edit} is not a user turn", field="edit")
        conv_id = edited["conversation_id"]
        turn = conv.add_user_turn(db, user["id"], conv_id, req.content, edit_of=edited)
    else:
        conv_id = req.conversation_id
        if conv_id is None:
            conv_id = conv.create_conversation(db, user["id"], req.content, req.system)
            conv.add_history(db, user["id"], conv_id, req.history or [])
        else:
            conv.get_conversation_row(db, user["id"], conv_id)
        follow = conv.get_message(db, user["id"], req.follow) if req.follow is not None else None
        turn = conv.add_user_turn(db, user["id"], conv_id, req.content, follow=follow)
    return conv_id, turn, conv.prompt_messages(db, conv_id, turn["id"])


async def prepare_turn(state: AppState, user: dict, req: TurnRequest) -> PreparedTurn:
    conv_id, turn, messages = await state.store.write(_prepare, user, req)
    s = state.config.server
    messages = trim_prompt(messages, s.max_messages, s.max_request_chars)
    fresh = await state.store.read(get_user, user["id"])   # current_version may have moved
    adapter = await state.store.read(adapter_for, state.adapters_dir, fresh, req.model)
    gen = GenRequest(messages=messages, n=req.n, temperature=req.temperature, top_p=req.top_p,
                     max_tokens=req.max_tokens, stop=req.stop, adapter=adapter,
                     frequency_penalty=req.frequency_penalty,
                     presence_penalty=req.presence_penalty, seed=req.seed, owner=user["id"])
    explore = turn_mode(state, req.explore, req.n, req.model, req.regenerate is not None)
    prep = PreparedTurn(conv_id, turn, gen, "personal" if adapter else "base", fresh, explore)
    if adapter is not None and state.adapter_failures.failed(adapter):
        await fall_back(state, prep, adapter)   # known broken: do not try to load it again
    return prep


async def fall_back(state: AppState, prep: PreparedTurn, failed: AdapterRef) -> None:
    """Route the turn through the newest version before `failed` (its adapter) not known to
    be broken, else the base; remember which version should have served."""
    prep.fallback_from = prep.fallback_from or failed.version
    earlier = await state.store.read(fallback.earlier_versions, state.adapters_dir,
                                     failed.user_id, failed.version)
    usable = [ref for ref in earlier if not state.adapter_failures.failed(ref)]
    prep.gen.adapter = usable[0] if usable else None
    prep.model = "personal" if prep.gen.adapter else "base"


async def _adapter_failed(state: AppState, prep: PreparedTurn, exc: ModelError) -> None:
    """An adapter did not load: record it for the admin, pick the next one (or re-raise if
    it was the base that failed: nothing to fall back to)."""
    failed = prep.gen.adapter
    if failed is None:
        raise exc
    log.warning("adapter %s failed to load, falling back: %s", failed.name, exc)
    state.adapter_failures.record(failed, exc)
    await fall_back(state, prep, failed)


async def explore_and_store(state: AppState, prep: PreparedTurn, mode: str) -> list[dict]:
    """An exploring turn (selection `mode`), falling back past the user's adapter if it fails
    to load."""
    while True:
        try:
            return await explore_turn(state, prep.user, prep, mode)
        except ModelError as exc:
            await _adapter_failed(state, prep, exc)


async def generate(state: AppState, prep: PreparedTurn) -> GenResult:
    """Generate the turn, falling back past adapters that fail to load."""
    while True:
        try:
            return await state.engine.generate(prep.gen)
        except ModelError as exc:
            await _adapter_failed(state, prep, exc)


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
        "finish_reason": c.finish_reason, "adapter_fallback_from": prep.fallback_from,
    } for c in result.candidates]


def _store_candidates(db, turn: dict, rows: list[dict], regenerate: bool) -> list[dict]:
    if not conv.message_exists(db, turn["id"]):
        # The user (or this conversation) was erased while the answer was generating:
        # the erase stands, the answer is dropped rather than stored for nobody.
        raise Gone(f"conversation {turn['conversation_id']} was deleted while the answer "
                   "was being generated; the answer was not stored")
    if regenerate:
        offset = len(conv.candidates_of(db, turn["id"]))
        for i, row in enumerate(rows):
            row["candidate_index"] = offset + i
    stored = conv.add_candidates(db, turn, rows)
    if regenerate and stored:
        conv.choose_candidate(db, stored[0])
        stored = [conv.message_row(db, m["id"]) for m in stored]
    return stored


async def store_result(state: AppState, prep: PreparedTurn, result: GenResult,
                       regenerate: bool = False) -> list[dict]:
    return await state.store.write(_store_candidates, prep.user_turn,
                                   candidate_rows(prep, result), regenerate)


async def run_turn(state: AppState, user: dict, req: TurnRequest) -> tuple[PreparedTurn, list]:
    """Non-streaming turn: returns the prepared turn and the stored candidates."""
    prep = await prepare_turn(state, user, req)
    if prep.explore:
        return prep, await explore_and_store(state, prep, prep.explore)
    result = await generate(state, prep)
    return prep, await store_result(state, prep, result, req.regenerate is not None)


async def stream_turn(state: AppState, prep: PreparedTurn,
                      regenerate: bool = False) -> AsyncGenerator[Delta | list[dict], None]:
    """Yield Deltas, then the stored candidate rows. If the consumer stops early the engine
    is cancelled and whatever was generated is still stored (finish_reason 'cancelled').
    An adapter that fails to load (before any text) is fallen back past, as in generate.

    An exploring turn cannot stream: which candidates are shown is known only once the whole
    pool is generated, so each shown answer arrives as one delta."""
    if prep.explore:
        stored = await explore_and_store(state, prep, prep.explore)
        for i, row in enumerate(stored):
            yield Delta(i, row["content"])
        yield stored
        return

    async def keep_partial(partial: GenResult) -> None:
        try:
            await store_result(state, prep, partial, regenerate)
        except Gone:
            pass            # erased meanwhile: nothing to keep

    result, started = None, False
    while result is None:
        stream = state.engine.stream(prep.gen, on_abandon=keep_partial)
        try:
            async for item in stream:
                if isinstance(item, GenResult):
                    result = item
                else:
                    started = True
                    yield item
        except ModelError as exc:
            if started:
                raise
            await _adapter_failed(state, prep, exc)
        finally:
            await stream.aclose()
    yield await store_result(state, prep, result, regenerate)
