"""What "My assistant" shows about learning: progress to the next run, versions with their
gate verdicts, what the reward head likes among the user's own answers, and side-by-side
examples of the base and the user's version on the same prompts.

Everything is read from stored data (runs' gate metrics, the user's reward head applied to
features that training already cached); only the examples generate text, and they go through
the engine's batched queue like any chat request, so the generation thread is never held for
long by this page.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np

from adapters.feature_cache import cached_features
from assistant.rewards import _load, head_summary, latest_head
from feedback_store import feedback as fb
from feedback_store import runs
from feedback_store.conversations import opening_turns, prompt_messages, user_messages
from feedback_store.sql import Database

GATE_FIELDS = ("win_rate", "reward_gain", "candidate_reward", "baseline_reward", "baseline",
               "n_prompts", "candidate_kl", "candidate_len", "baseline_len")
EXAMPLE_SHOWN = 3          # answers shown in each of "likes" and "dislikes"
SNIPPET_CHARS = 400


def effective_new_labels(db: Database, user_id: int, counts: dict) -> int:
    """New labels since the last run, counting a vote changed several times as one label
    when the store says so (counts' `effective_new_labels`), else the raw event count."""
    value = counts.get("effective_new_labels")
    return value if isinstance(value, int) else runs.new_event_count(db, user_id)


def training_progress(db: Database, user_id: int, min_new_events: int) -> dict:
    counts = fb.counts(db, user_id)
    have = effective_new_labels(db, user_id, counts)
    active = runs.active_run(db, user_id)
    return {"new_labels": have, "needed": min_new_events,
            "remaining": max(0, min_new_events - have),
            "active_run": {"id": active["id"], "status": active["status"]} if active else None}


def _gate_of(metrics: dict | None) -> dict | None:
    gate = (metrics or {}).get("gate")
    if not isinstance(gate, dict):
        return None
    return {**{k: gate.get(k) for k in GATE_FIELDS}, "win_rate_vs_base": _vs_base(gate)}


def _vs_base(gate: dict) -> float | None:
    """The version's win rate against the bare base on the held-out prompts. Runs gated
    before the gate recorded it have it only where the base was the baseline (the same
    figure); otherwise None, and the page shows the gate's own figure against the previous
    version instead."""
    if isinstance(gate.get("win_rate_vs_base"), int | float):
        return gate["win_rate_vs_base"]
    return gate.get("win_rate") if gate.get("baseline") == "base" else None


def version_history(db: Database, user_id: int) -> list[dict]:
    """Every training run that reached the gate, oldest first: its verdict and numbers, and
    the version it made (None when rejected)."""
    rows = []
    for run in reversed(runs.list_runs(db, user_id)):
        gate = _gate_of(run.get("metrics"))
        if gate is None:
            continue
        rows.append({"run_id": run["id"], "status": run["status"],
                     "version": run.get("adapter_version"), "finished_at": run["finished_at"],
                     "decision": (run["metrics"] or {}).get("decision"), "gate": gate})
    return rows


def _snippet(text: str) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS - 1] + "…"


def scored_answers(db: Database, user_id: int, base_id: str) -> dict:
    """The user's own answers ranked by their latest reward head, on cached features only
    (an answer training never saw is counted as unscored rather than computed here)."""
    head_row = latest_head(db, user_id, base_id)
    if head_row is None:
        return {"head": None, "likes": [], "dislikes": [], "scored": 0, "unscored": 0}
    messages = {m["id"]: m for m in user_messages(db, user_id, "assistant") if m["content"]}
    head = _load(head_row["path"])
    vectors = {k: v for k, v in cached_features(db, list(messages), base_id).items()
               if v.size == head.dim}
    ids = sorted(vectors)
    scores = head.score(np.stack([vectors[i] for i in ids])) if ids else np.zeros(0)
    order = np.argsort(-scores)
    ranked = [_answer_view(db, messages[ids[j]], float(scores[j])) for j in order]
    shown = min(EXAMPLE_SHOWN, len(ranked) // 2)
    return {"head": head_summary(db, user_id, base_id), "scored": len(ids),
            "unscored": len(messages) - len(ids),
            "likes": ranked[:shown], "dislikes": ranked[::-1][:shown]}


def _answer_view(db: Database, message: dict, score: float) -> dict:
    prompt = prompt_messages(db, message["conversation_id"], message["candidate_group"])
    return {"message_id": message["id"], "conversation_id": message["conversation_id"],
            "prompt": _snippet(prompt[-1]["content"]) if prompt else "",
            "answer": _snippet(message["content"]), "score": round(score, 3),
            "model": message["model"], "adapter_version": message["adapter_version"]}


def insights(db: Database, user_id: int, base_id: str, min_new_events: int) -> dict:
    return {"training": training_progress(db, user_id, min_new_events),
            "versions": version_history(db, user_id),
            "reward": scored_answers(db, user_id, base_id)}


# ---- side-by-side examples ---------------------------------------------------------------

@dataclass(frozen=True)
class ExampleSettings:
    prompts: int = 2          # prompts shown side by side (each costs two generations)
    max_tokens: int = 96      # short answers: the page waits for them
    seed: int = 0


def example_prompts(db: Database, user_id: int, settings: ExampleSettings) -> list[list[dict]]:
    """A reproducible sample of the user's own single-message prompts (the latest 50),
    the kind of prompt the gate holds out."""
    turns = opening_turns(db, user_id, 50)
    seen, unique = set(), []
    for t in turns:
        key = t["content"].strip()
        if key and key not in seen:
            seen.add(key)
            unique.append([{"role": "user", "content": t["content"]}])
    random.Random(settings.seed).shuffle(unique)
    return unique[:settings.prompts]


def cache_key(user: dict) -> str:
    return json.dumps([user["id"], user.get("current_version")])
