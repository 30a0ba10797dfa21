"""Effective labels (issue 14): a toggled vote is one label, not several events; which
sources a user preferred."""

from __future__ import annotations

import os

from test_training_data import turn_with, w, world  # noqa: F401  (fixture)

from feedback_store import conversations as conv
from feedback_store import feedback as fb
from feedback_store import runs
from feedback_store.training_data import source_preferences
from feedback_store.users import create_user
from tests.conftest import BOTH

BACKENDS = BOTH  # the store on SQLite and on PostgreSQL


def test_a_toggled_vote_is_one_label(world):  # noqa: F811
    db, uid, _, m = world
    for value in ("up", "down", "up"):
        w(db, fb.set_thumbs, uid, m["x"], value, [], None)
    assert len(fb.new_events(db, uid)) == 3
    assert fb.effective_new_labels(db, uid) == 1
    assert runs.new_event_count(db, uid) == 1
    assert fb.counts(db, uid)["effective_new_labels"] == 1


def test_cleared_votes_and_ties_are_no_labels_rankings_and_picks_are(world):  # noqa: F811
    db, uid, _, m = world
    w(db, fb.set_thumbs, uid, m["x"], "up", [], None)
    w(db, fb.clear_thumbs, uid, m["x"])
    w(db, fb.compare, uid, [m["p"], m["q"]], "tie", [], None)
    assert fb.effective_new_labels(db, uid) == 0
    w(db, fb.compare, uid, [m["p"], m["r"]], "b", [], None)
    w(db, fb.compare, uid, [m["p"], m["r"]], "a", [], None)        # changed its mind
    w(db, fb.rank, uid, [m["q"], m["p"], m["r"]])
    assert fb.effective_new_labels(db, uid) == 2


def test_only_unconsumed_labels_count_and_due_users_use_them(world):  # noqa: F811
    db, uid, _, m = world
    for value in ("up", "down", "up", "down"):
        w(db, fb.set_thumbs, uid, m["x"], value, [], None)
    assert runs.due_users(db, 2) == []                    # 4 events, but 1 label
    # As the worker does: the run is queued, claimed, marks the events it trains on, and ends
    # (rejected by the gate: no adapter version, the events stay used).
    w(db, runs.enqueue, uid, True, "admin")
    run = w(db, runs.claim_next, os.getpid())["id"]
    events = [e["id"] for e in fb.new_events(db, uid)]
    w(db, fb.mark_events_used, uid, events, run)
    w(db, lambda d: runs.finish(d, run, "rejected", events_used=len(events)))
    assert fb.effective_new_labels(db, uid) == 0
    w(db, fb.set_thumbs, uid, m["y"], "up", [], None)
    w(db, fb.set_thumbs, uid, m["p"], "down", [], None)
    assert [u["id"] for u in runs.due_users(db, 2)] == [uid]


def test_source_preferences_count_wins_per_source_and_arm(world):  # noqa: F811
    db, uid, _, m = world
    db["messages"].update(m["p"], {"source": "arm", "arm": "example"})
    db["messages"].update(m["q"], {"source": "personal"})
    db["messages"].update(m["r"], {"source": "base"})
    w(db, fb.rank, uid, [m["p"], m["q"], m["r"]])
    prefs = source_preferences(db, uid)
    assert prefs["arm:example"] == {"won": 2, "lost": 0, "win_rate": 1.0}
    assert prefs["personal"] == {"won": 1, "lost": 1, "win_rate": 0.5}
    assert prefs["base"] == {"won": 0, "lost": 2, "win_rate": 0.0}
    assert list(prefs)[0] == "arm:example"


def _compared_turns(db, uid: int, cid: int, turns: int) -> None:
    for i in range(turns):
        _, (a, b) = w(db, turn_with, uid, cid, f"Q{i}", [f"a{i}", f"b{i}"])
        db["messages"].update(a, {"source": "arm", "arm": "example"})
        db["messages"].update(b, {"source": "personal"})
        w(db, fb.compare, uid, [a, b], "a", [], None)


def _queries(db, monkeypatch, fn, *args):
    """fn's result and how many SQL statements it ran."""
    calls = []
    run = db.execute

    def counted(sql, params=None):
        calls.append(sql)
        return run(sql, params)

    monkeypatch.setattr(db, "execute", counted)
    try:
        return fn(*args), len(calls)
    finally:
        monkeypatch.undo()


def test_source_preferences_reads_answers_in_one_query_not_one_per_pair(db, monkeypatch):
    """An exploring turn reads the user's record of choices; its cost must not grow a query
    per compared answer (it did: two lookups per pair)."""
    counts = {}
    for name, turns in (("few", 2), ("many", 12)):
        uid = w(db, create_user, name)[0]["id"]
        cid = w(db, conv.create_conversation, uid, "t", None)
        _compared_turns(db, uid, cid, turns)
        prefs, counts[name] = _queries(db, monkeypatch, source_preferences, db, uid)
        assert prefs["arm:example"] == {"won": turns, "lost": 0, "win_rate": 1.0}
    assert counts["many"] == counts["few"]


def test_find_messages_returns_only_the_users_own_across_chunks(world, monkeypatch):  # noqa: F811
    db, uid, cid, m = world
    other = w(db, create_user, "bob")[0]["id"]
    bob_cid = w(db, conv.create_conversation, other, "t", None)
    _, (foreign,) = w(db, turn_with, other, bob_cid, "Q", ["theirs"])
    monkeypatch.setattr(conv, "ID_CHUNK", 2)
    found = conv.find_messages(db, uid, [*m.values(), foreign, 10**9, m["x"]])
    assert set(found) == set(m.values())
    assert {found[i]["content"] for i in found} == set(m)
