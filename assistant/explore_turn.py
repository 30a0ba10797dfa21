"""One exploring comparison turn: pool -> features -> selection -> store what is shown.

The pure parts (pool plan, arms, selection rules) are in assistant/explore.py; this module
reads what they need from the store and the engine and writes the shown candidates with
their provenance (messages.source, .arm, .selection).
"""

from __future__ import annotations

import json
import random

import numpy as np

from adapters import registry
from adapters.feature_cache import store_features
from adapters.features import compute_features
from assistant import explore as ex
from assistant.engine import AdapterRef, GenResult
from assistant.rewards import latest_head
from assistant.state import AppState
from feedback_store import conversations as conv
from feedback_store.errors import Gone, ModelError
from feedback_store.training_data import source_preferences

MAX_PEERS = 8       # peers considered per turn: bounds the adapters one turn may load
OWN = ("personal", "hot", "arm")     # slots on the user's serving adapter

EXPLORE_MODES = ("off", "on", "auto", *ex.SELECTIONS)


def turn_mode(state: AppState, requested: str | None, n: int, model: str,
              regenerate: bool) -> str | None:
    """The selection mode if this turn explores, else None. Only comparison turns (n >= 2)
    of the user's own model explore; plain chat, base requests and regenerations do not."""
    e = state.config.explore
    if n < 2 or model != "personal" or regenerate or requested == "off":
        return None
    if requested in (None, "on"):
        return e.selection if e.enabled else None
    return requested


def _sources(db, adapters_dir, user: dict, personal: AdapterRef | None,
             rng: random.Random) -> ex.Sources:
    previous = None
    if personal is not None:
        row = registry.find_version(db, user["id"], personal.version)
        prow = row and registry.find_version(db, user["id"], row["parent_version"])
        if prow:
            previous = AdapterRef(user["id"], prow["version"], adapters_dir / prow["path"])
    peers = registry.serving_peers(db, user["id"])
    rng.shuffle(peers)
    refs = tuple(AdapterRef(p["user_id"], p["version"], adapters_dir / p["path"])
                 for p in peers[:MAX_PEERS])
    return ex.Sources(personal, previous, refs)


def _head_info(db, user_id: int, base_id: str) -> tuple[int, str | None]:
    row = latest_head(db, user_id, base_id)
    if row is None:
        return 0, None
    return int(json.loads(row["metrics"] or "{}").get("n_pairs") or 0), row["path"]


def _row(slot: ex.Slot, result: GenResult, prep, selection: str) -> dict:
    cand, gen = result.candidates[0], prep.gen
    own = slot.source in (*OWN, "previous")
    return {
        "content": cand.text,
        "model": "base" if slot.source == "base" else "peer" if slot.source == "peer"
        else ("personal" if slot.adapter else "base"),
        # A peer's version number is theirs: never stored with this user's message.
        "adapter_version": slot.adapter.version if own and slot.adapter else None,
        "temperature": slot.temperature, "top_p": gen.top_p, "max_tokens": gen.max_tokens,
        "frequency_penalty": gen.frequency_penalty, "presence_penalty": gen.presence_penalty,
        "seed": gen.seed, "prompt_tokens": None, "completion_tokens": len(cand.tokens),
        "first_token_ms": cand.first_token_ms, "total_ms": cand.total_ms,
        "finish_reason": cand.finish_reason,
        "source": slot.source, "arm": slot.arm.name if slot.arm else None,
        "selection": selection, "adapter_fallback_from": prep.fallback_from,
    }


def _store(db, turn: dict, rows: list[dict], feats: dict[int, np.ndarray], base_id: str
           ) -> list:
    if not db["messages"].count_where("id = ?", [turn["id"]]):
        # Erased while the pool was generating: the erase stands (as in chat.store_result).
        raise Gone(f"conversation {turn['conversation_id']} was deleted while the answers "
                   "were being generated; they were not stored")
    stored = conv.add_candidates(db, turn, rows)
    if feats:
        store_features(db, {m["id"]: feats[i] for i, m in enumerate(stored) if i in feats},
                       base_id)
    return stored


def _usable(slots: list[ex.Slot], results: list, n: int) -> tuple[list, list[GenResult]]:
    """Drop pool candidates whose adapter failed to load if it was someone else's or an
    older version (a peer's broken adapter must not break this user's turn); a failure of
    the user's own serving adapter is raised, for the caller's fallback."""
    own = [r for s, r in zip(slots, results, strict=True)
           if isinstance(r, BaseException) and s.adapter is not None and s.source in OWN]
    if own:
        raise own[0]
    keep = [(s, r) for s, r in zip(slots, results, strict=True)
            if not isinstance(r, BaseException)]
    if len(keep) < n:
        bad = next(r for r in results if isinstance(r, BaseException))
        raise bad if isinstance(bad, ModelError) else ModelError(str(bad))
    return [s for s, _ in keep], [r for _, r in keep]


def _saying_something(slots: list[ex.Slot], results: list[GenResult], n: int
                      ) -> tuple[list[ex.Slot], list[GenResult]]:
    """Drop arm answers that are only their cues (ex.adds_to_its_cues), unless fewer than
    n answers would be left."""
    keep = [i for i, (s, r) in enumerate(zip(slots, results, strict=True))
            if ex.adds_to_its_cues(s.arm, r.candidates[0].text)]
    if len(keep) < n:
        return slots, results
    return [slots[i] for i in keep], [results[i] for i in keep]


async def explore_turn(state: AppState, user: dict, prep, mode: str) -> list[dict]:
    """Generate the pool, pick prep.gen.n candidates by `mode`, store and return them."""
    e, engine, gen = state.config.explore, state.engine, prep.gen
    rng = random.Random(gen.seed) if gen.seed is not None else random.Random()
    have = await state.store.read(_sources, state.adapters_dir, user, gen.adapter, rng)
    record = await state.store.read(source_preferences, user["id"])
    slots = ex.plan_pool(max(e.pool, gen.n), e.sources, have, ex.parse_arms(e.arms),
                         gen.temperature, max(e.hot_temperature, gen.temperature), rng, record)
    pool = await ex.generate_pool(engine, ex.pool_requests(gen, slots, e.demo_question))
    slots, results = _saying_something(*_usable(slots, pool, gen.n), gen.n)
    n_pairs, head_path = await state.store.read(_head_info, user["id"], engine.base_id)
    ensemble = ex.load_ensemble(head_path) if head_path else None
    mode = ex.choose_mode(mode, n_pairs, ensemble is not None, e.uncertainty_from_pairs)
    X = None
    if mode in ("uncertainty", "diversity") and e.features:
        items = [(gen.messages, r.candidates[0].text) for r in results]
        X = await engine.call(compute_features, engine.model, engine.tokenizer, items)
    picked = ex.select(gen.n, mode, rng, X, ensemble, [s.draw for s in slots])
    rng.shuffle(picked)             # position must not tell where an answer came from
    rows = [_row(slots[i], results[i], prep, mode) for i in picked]
    prompt_tokens = results[0].prompt_tokens
    for row in rows:
        row["prompt_tokens"] = prompt_tokens
    feats = {k: X[i] for k, i in enumerate(picked)} if X is not None else {}
    return await state.store.write(_store, prep.user_turn, rows, feats, engine.base_id)
