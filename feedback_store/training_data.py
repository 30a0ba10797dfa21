"""Training rows in TRL's two standard conversational formats, from CURRENT feedback.

Training and export both call `training_rows`, so what a person downloads is exactly what
their adapter and reward head learn from:

- "preference" (DPO, reward modelling): {"prompt", "chosen", "rejected"} from comparisons
  (a/b only), every ordered pair of a ranking, and an up and a down on two candidates of
  one turn;
- "unpaired" (KTO): {"prompt", "completion", "label"} from thumbs and from comparisons
  (winner true, loser false).

Feedback on messages whose conversation was deleted is skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from feedback_store import conversations as conv
from feedback_store import feedback as fb
from feedback_store.errors import BadRequest
from feedback_store.sql import Database
from feedback_store.users import get_user_by_name

FORMATS = ("preference", "unpaired")


@dataclass
class _Pair:
    chosen: int
    rejected: int
    event_ids: list[int] = field(default_factory=list)


@dataclass
class _Label:
    message: int
    label: bool
    event_ids: list[int] = field(default_factory=list)


def check_format(fmt: object) -> str:
    if fmt not in FORMATS:
        raise BadRequest(f"must be one of {', '.join(FORMATS)}; got {fmt!r}", field="format")
    return str(fmt)


def training_rows(db: Database, user_id: int, fmt: str, with_ids: bool = False) -> list[dict]:
    """The user's training rows in `fmt`; with_ids adds message and event ids for training."""
    check_format(fmt)
    lookup = _Lookup(db, user_id)
    if fmt == "preference":
        pairs = _pairs(db, user_id)
        lookup.preload([i for p in pairs for i in (p.chosen, p.rejected)])
        rows = [_preference_row(lookup, p, with_ids) for p in pairs]
    else:
        labels = _labels(db, user_id)
        lookup.preload([x.message for x in labels])
        rows = [_unpaired_row(lookup, x, with_ids) for x in labels]
    return [r for r in rows if r is not None]


# ---- what the feedback says --------------------------------------------------------------

def _comparison_outcomes(db: Database, user_id: int) -> list[tuple[int, int, int]]:
    """(winner, loser, event_id) of each current a/b comparison (ties say nothing)."""
    out = []
    for c in fb.comparisons(db, user_id):
        if c["choice"] not in ("a", "b"):
            continue
        a, b = c["message_a"], c["message_b"]
        out.append((a, b, c["event_id"]) if c["choice"] == "a" else (b, a, c["event_id"]))
    return out


def _pairs(db: Database, user_id: int) -> list[_Pair]:
    pairs = [_Pair(w, lose, [e]) for w, lose, e in _comparison_outcomes(db, user_id)]
    for r in fb.rankings(db, user_id):
        order = r["message_ids"]
        pairs += [_Pair(hi, lo, [r["event_id"]]) for hi, lo in combinations(order, 2)]
    thumbs = fb.thumbs_by_turn(db, user_id)
    pairs += [_Pair(u["message_id"], d["message_id"], [u["event_id"], d["event_id"]])
              for u in thumbs if u["value"] == "up"
              for d in thumbs if d["value"] == "down"
              and d["candidate_group"] == u["candidate_group"]]
    return _merge(pairs, lambda p: (p.chosen, p.rejected))


def _labels(db: Database, user_id: int) -> list[_Label]:
    labels = [_Label(t["message_id"], t["value"] == "up", [t["event_id"]])
              for t in fb.thumbs_by_turn(db, user_id)]
    for winner, loser, event_id in _comparison_outcomes(db, user_id):
        labels += [_Label(winner, True, [event_id]), _Label(loser, False, [event_id])]
    return _merge(labels, lambda x: (x.message, x.label))


def _merge(items: list, key) -> list:
    """One row per key (the same pair from a comparison and a ranking counts once),
    keeping every event that supports it."""
    merged: dict = {}
    for item in items:
        if key(item) in merged:
            merged[key(item)].event_ids += item.event_ids
        else:
            merged[key(item)] = item
    for item in merged.values():
        item.event_ids = sorted(set(item.event_ids))
    return list(merged.values())


# ---- rendering rows -----------------------------------------------------------------------

class _Lookup:
    """The user's messages and turn prompts, each read once per call."""

    def __init__(self, db: Database, user_id: int) -> None:
        self.db, self.user_id = db, user_id
        self.messages: dict[int, dict | None] = {}
        self.prompts: dict[int, list[dict]] = {}

    def preload(self, message_ids: list[int]) -> None:
        """Read the messages of many ids at once (one query per chunk, not per id)."""
        missing = [i for i in message_ids if i not in self.messages]
        found = conv.find_messages(self.db, self.user_id, missing)
        self.messages.update({i: found.get(i) for i in missing})

    def message(self, message_id: int) -> dict | None:
        if message_id not in self.messages:
            self.messages[message_id] = conv.find_message(self.db, self.user_id, message_id)
        return self.messages[message_id]

    def prompt(self, turn_id: int) -> list[dict]:
        """System message, then the turns up to this user turn along its parent links,
        i.e. the exact context the candidates were generated from."""
        if turn_id not in self.prompts:
            turn = conv.message_row(self.db, turn_id)
            self.prompts[turn_id] = conv.prompt_messages(self.db, turn["conversation_id"], turn_id)
        return self.prompts[turn_id]


def _answer(message: dict) -> list[dict]:
    return [{"role": "assistant", "content": message["content"]}]


def _preference_row(lookup: _Lookup, pair: _Pair, with_ids: bool) -> dict | None:
    chosen, rejected = lookup.message(pair.chosen), lookup.message(pair.rejected)
    if chosen is None or rejected is None:
        return None
    row: dict[str, Any] = {"prompt": lookup.prompt(chosen["candidate_group"]),
                           "chosen": _answer(chosen),
           "rejected": _answer(rejected)}
    if with_ids:
        row.update(chosen_id=pair.chosen, rejected_id=pair.rejected, event_ids=pair.event_ids)
    return row


def _unpaired_row(lookup: _Lookup, item: _Label, with_ids: bool) -> dict | None:
    message = lookup.message(item.message)
    if message is None:
        return None
    row = {"prompt": lookup.prompt(message["candidate_group"]), "completion": _answer(message),
           "label": item.label}
    if with_ids:
        row.update(message_id=item.message, event_ids=item.event_ids)
    return row


def source_label(source: str | None, arm: str | None = None) -> str:
    """The name a source's record is kept under: each style arm separately
    ("arm:<name>"), every other source by its name ("unknown" before it was recorded)."""
    source = source or "unknown"
    return f"arm:{arm}" if source == "arm" and arm else source


def source_preferences(db: Database, user_id: int) -> dict[str, dict]:
    """Which sources' answers the user preferred (issue 14's provenance): per source
    (messages.source; "unknown" for answers from before it was recorded) how often its
    answer won or lost a preference pair, and the share won. Style arms count per arm as
    "arm:<name>". Pairs between two answers of one source say nothing and are skipped."""
    stats: dict[str, dict] = {}
    lookup = _Lookup(db, user_id)

    def label(message: dict) -> str:
        return source_label(message.get("source"), message.get("arm"))

    pairs = _pairs(db, user_id)
    lookup.preload([i for p in pairs for i in (p.chosen, p.rejected)])
    for pair in pairs:
        won, lost = lookup.message(pair.chosen), lookup.message(pair.rejected)
        if won is None or lost is None or label(won) == label(lost):
            continue
        for message, key in ((won, "won"), (lost, "lost")):
            entry = stats.setdefault(label(message), {"won": 0, "lost": 0})
            entry[key] += 1
    for entry in stats.values():
        entry["win_rate"] = round(entry["won"] / (entry["won"] + entry["lost"]), 3)
    return dict(sorted(stats.items(), key=lambda kv: -kv[1]["win_rate"]))


def export_jsonl(db: Database, user_name: str, fmt: str) -> str:
    """One user's rows (looked up by name) as JSON Lines, for the admin export."""
    check_format(fmt)
    user = get_user_by_name(db, user_name)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n"
                   for row in training_rows(db, user["id"], fmt))
