"""Training rows (TRL preference / unpaired formats), the event log, and both exports."""

from __future__ import annotations

import json

import httpx
import pytest

from feedback_store import conversations as conv
from feedback_store import feedback as fb
from feedback_store import runs
from feedback_store.db import transaction
from feedback_store.errors import BadRequest
from feedback_store.training_data import training_rows
from feedback_store.users import create_user
from tests.conftest import BOTH

BACKENDS = BOTH  # the store on SQLite and on PostgreSQL


def w(db, fn, *args):
    return transaction(db, fn, *args)


def turn_with(db, uid: int, cid: int, question: str, answers: list[str]) -> tuple[dict, list]:
    turn = conv.add_user_turn(db, uid, cid, question)
    return turn, [m["id"] for m in conv.add_candidates(db, turn, [
        {"content": a, "model": "base"} for a in answers])]


@pytest.fixture
def world(db):
    """alice: a system prompt, turn 1 (x, y), turn 2 (p, q, r) following x."""
    uid = w(db, create_user, "alice")[0]["id"]
    cid = w(db, conv.create_conversation, uid, "t", "Be brief.")
    _, (x, y) = w(db, turn_with, uid, cid, "Q1", ["x", "y"])
    _, (p, q, r) = w(db, turn_with, uid, cid, "Q2", ["p", "q", "r"])
    return db, uid, cid, {"x": x, "y": y, "p": p, "q": q, "r": r}


def texts(row: dict, *keys: str) -> tuple:
    return tuple(row[k][0]["content"] for k in keys)


PROMPT_2 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "x"}, {"role": "user", "content": "Q2"}]


def test_preference_rows_from_each_source(world):
    db, uid, _, m = world
    w(db, fb.compare, uid, [m["x"], m["y"]], "b", [], None)
    w(db, fb.rank, uid, [m["q"], m["p"], m["r"]])
    w(db, fb.set_thumbs, uid, m["r"], "up", [], None)
    w(db, fb.set_thumbs, uid, m["q"], "down", [], None)
    rows = training_rows(db, uid, "preference")
    assert {texts(r, "chosen", "rejected") for r in rows} == {
        ("y", "x"), ("q", "p"), ("q", "r"), ("p", "r"), ("r", "q")}
    assert len(rows) == 5
    first = next(r for r in rows if texts(r, "chosen") == ("y",))
    assert first["prompt"] == PROMPT_2[:2]
    assert first["chosen"] == [{"role": "assistant", "content": "y"}]
    assert set(first) == {"prompt", "chosen", "rejected"}
    second = next(r for r in rows if texts(r, "chosen", "rejected") == ("q", "p"))
    assert second["prompt"] == PROMPT_2


def test_ties_and_both_bad_are_not_pairs_and_changes_replace(world):
    db, uid, _, m = world
    w(db, fb.compare, uid, [m["x"], m["y"]], "a", [], None)
    w(db, fb.compare, uid, [m["y"], m["x"]], "tie", [], None)
    w(db, fb.compare, uid, [m["p"], m["q"]], "both_bad", [], None)
    assert training_rows(db, uid, "preference") == []
    assert training_rows(db, uid, "unpaired") == []
    assert len(fb.events(db, uid)) == 3


def test_unpaired_rows_and_ids(world):
    db, uid, _, m = world
    w(db, fb.set_thumbs, uid, m["x"], "up", ["clear"], None)
    w(db, fb.set_thumbs, uid, m["x"], "down", [], None)        # replaces the up
    w(db, fb.compare, uid, [m["p"], m["q"]], "a", [], None)
    rows = training_rows(db, uid, "unpaired", with_ids=True)
    got = {(r["message_id"], r["label"]) for r in rows}
    assert got == {(m["x"], False), (m["p"], True), (m["q"], False)}
    thumb = next(r for r in rows if r["message_id"] == m["x"])
    assert thumb["completion"] == [{"role": "assistant", "content": "x"}]
    assert thumb["event_ids"] == [fb.current_thumbs(db, uid, m["x"])["event_id"]]
    pref = training_rows(db, uid, "preference", with_ids=True)
    assert [(r["chosen_id"], r["rejected_id"]) for r in pref] == [(m["p"], m["q"])]
    assert len(pref[0]["event_ids"]) == 1


def test_same_pair_from_two_sources_is_one_row_with_both_events(world):
    db, uid, _, m = world
    w(db, fb.compare, uid, [m["p"], m["q"]], "a", [], None)
    w(db, fb.rank, uid, [m["p"], m["q"]])
    rows = training_rows(db, uid, "preference", with_ids=True)
    assert len(rows) == 1 and len(rows[0]["event_ids"]) == 2


def test_new_events_and_mark_used(world):
    db, uid, _, m = world
    w(db, fb.set_thumbs, uid, m["x"], "up", [], None)
    w(db, fb.set_thumbs, uid, m["y"], "down", [], None)
    first = [e["id"] for e in fb.new_events(db, uid)]
    assert len(first) == 2
    w(db, runs.enqueue, uid, True, "test")
    run = w(db, runs.claim_next, 1)["id"]            # the running run that uses them
    assert w(db, fb.mark_events_used, uid, first, run) == 2
    assert fb.new_events(db, uid) == []
    assert w(db, fb.mark_events_used, uid, first, run + 1) == 0   # first run keeps them
    w(db, fb.set_thumbs, uid, m["p"], "up", [], None)
    new = fb.new_events(db, uid)
    assert [(e["kind"], e["message_ids"]) for e in new] == [("thumbs", [m["p"]])]
    assert fb.counts(db, uid)["events_since_last_training"] == 1


def test_deleted_conversation_drops_rows_and_bad_format(world):
    db, uid, cid, m = world
    w(db, fb.compare, uid, [m["x"], m["y"]], "a", [], None)
    w(db, conv.delete_conversation, uid, cid)
    assert training_rows(db, uid, "preference") == []
    assert training_rows(db, uid, "unpaired") == []
    with pytest.raises(BadRequest, match="format"):
        training_rows(db, uid, "dpo")


# ---- exports over HTTP --------------------------------------------------------------------

def seed_feedback(live, key: str) -> None:
    """Two chat turns, then a comparison, a ranking and thumbs through the API."""
    h = live.headers(key)
    first = httpx.post(f"{live.url}/api/chat", headers=h, timeout=60,
                       json={"content": "Hi", "n": 2, "max_tokens": 4}).json()
    a, b = (c["id"] for c in first["candidates"])
    second = httpx.post(f"{live.url}/api/chat", headers=h, timeout=60, json={
        "content": "More", "n": 3, "max_tokens": 4,
        "conversation_id": first["conversation_id"]}).json()
    p, q, r = (c["id"] for c in second["candidates"])
    httpx.post(f"{live.url}/api/comparisons", headers=h,
               json={"message_ids": [a, b], "choice": "a"}).raise_for_status()
    httpx.post(f"{live.url}/api/rankings", headers=h,
               json={"message_ids": [r, q, p]}).raise_for_status()
    httpx.put(f"{live.url}/api/messages/{p}/thumbs", headers=h,
              json={"value": "down", "reasons": ["too_long"]}).raise_for_status()


def test_exports_load_as_trl_datasets(live_server, tmp_path, tokenizer):
    from datasets import load_dataset
    from trl.data_utils import apply_chat_template, is_conversational

    key = live_server.add_user("alice")
    seed_feedback(live_server, key)
    admin = live_server.headers(live_server.admin_key)
    expected = {"preference": ({"prompt", "chosen", "rejected"}, 4),
                "unpaired": ({"prompt", "completion", "label"}, 3)}
    for fmt, (columns, count) in expected.items():
        r = httpx.get(f"{live_server.url}/admin/export",
                      params={"user": "alice", "format": fmt}, headers=admin)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/jsonl")
        path = tmp_path / f"{fmt}.jsonl"
        path.write_text(r.text)
        ds = load_dataset("json", data_files=str(path), split="train")
        assert set(ds.column_names) == columns and len(ds) == count
        row = ds[0]
        assert row["prompt"][-1]["role"] == "user"
        assert all(set(m) == {"role", "content"} for m in row["prompt"])
        answers = ("chosen", "rejected") if fmt == "preference" else ("completion",)
        for col in answers:
            assert [m["role"] for m in row[col]] == ["assistant"]
        # What DPOTrainer / KTOTrainer do to each row first: render it with the template.
        assert is_conversational(row)
        rendered = apply_chat_template(row, tokenizer)
        assert rendered["prompt"].rstrip().endswith("assistant")
        if fmt == "unpaired":
            assert ds.features["label"].dtype == "bool"
            assert sorted(ds["label"]) == [False, False, True]


def test_export_errors_and_access(live_server):
    key = live_server.add_user("alice")
    admin = live_server.headers(live_server.admin_key)
    url = f"{live_server.url}/admin/export"
    r = httpx.get(url, params={"user": "alice", "format": "dpo"}, headers=admin)
    assert r.status_code == 400 and "format" in r.json()["detail"]
    r = httpx.get(url, params={"user": "nobody", "format": "preference"}, headers=admin)
    assert r.status_code == 404
    r = httpx.get(url, params={"user": "alice", "format": "preference"},
                  headers=live_server.headers(key))
    assert r.status_code == 403
    r = httpx.get(url, params={"user": "alice", "format": "preference"}, headers=admin)
    assert r.status_code == 200 and r.text == ""


def test_me_export_has_all_own_data(live_server):
    key = live_server.add_user("alice")
    other = live_server.add_user("bob")
    seed_feedback(live_server, key)
    seed_feedback(live_server, other)
    r = httpx.get(f"{live_server.url}/api/me/export", headers=live_server.headers(key))
    assert r.status_code == 200
    data = r.json()
    assert data["user"]["name"] == "alice"
    assert len(data["conversations"]) == 1
    turns = data["conversations"][0]["turns"]
    assert [len(t["candidates"]) for t in turns] == [2, 3]
    assert [e["kind"] for e in data["feedback_events"]] == ["comparison", "ranking", "thumbs"]
    assert len(data["thumbs"]) == 1 and len(data["comparisons"]) == 1
    assert len(data["rankings"]) == 1
    assert len(data["training_data"]["preference"]) == 4
    assert len(data["training_data"]["unpaired"]) == 3
    mine = {c["id"] for t in turns for c in t["candidates"]}
    assert {i for e in data["feedback_events"] for i in e["message_ids"]} <= mine
    assert "key_hash" not in json.dumps(data)
