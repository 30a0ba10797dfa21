"""Effective labels (issue 14): a toggled vote is one label, not several events; which
sources a user preferred."""

from __future__ import annotations

import os

from test_training_data import w, world  # noqa: F401  (fixture)

from feedback_store import feedback as fb
from feedback_store import runs
from feedback_store.training_data import source_preferences
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
