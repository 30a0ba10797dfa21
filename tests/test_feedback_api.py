"""Thumbs, comparisons, rankings, guidelines and /api/me over HTTP on a live server."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from feedback_store import conversations as conv
from feedback_store import feedback as fb
from feedback_store import runs
from feedback_store.clock import now


def user_id(live, key: str) -> int:
    return httpx.get(f"{live.url}/api/me", headers=live.headers(key)).json()["id"]


def seed_turn(live, uid: int, n: int = 2, conversation_id: int | None = None,
              system: str | None = None) -> tuple[dict, list[dict]]:
    """A user turn with n stored candidates, written straight to the store (no generation)."""
    def write(db):
        cid = conversation_id or conv.create_conversation(db, uid, "seed", system)
        turn = conv.add_user_turn(db, uid, cid, f"question {cid}")
        cands = conv.add_candidates(db, turn, [{"content": f"answer {i}", "model": "base"}
                                               for i in range(n)])
        return turn, cands
    return live.state.store.write_sync(write)


def events_of(live, uid: int) -> list[dict]:
    return live.state.store.write_sync(fb.events, uid)


def chosen_ids(live, turn_id: int) -> list[int]:
    cands = live.state.store.write_sync(lambda db: conv.candidates_of(db, turn_id))
    return [c["id"] for c in cands if c["chosen"]]


@pytest.fixture
def alice(live_server):
    key = live_server.add_user("alice")
    return key, user_id(live_server, key)


def test_guidelines_come_from_config(live_server, alice):
    r = httpx.get(f"{live_server.url}/api/guidelines", headers=live_server.headers(alice[0]))
    assert r.status_code == 200
    body, f = r.json(), live_server.config.feedback
    assert body["criterion"] == f.criterion
    assert body["reasons_up"] == list(f.reasons_up)
    assert body["reasons_down"] == list(f.reasons_down)
    assert body["compare_every"] == f.compare_every
    assert "Rate the answer" in body["guidelines"]


def test_thumbs_replace_keep_history_and_are_idempotent(live_server, alice):
    key, uid = alice
    _, (cand, _) = seed_turn(live_server, uid)
    url, h = f"{live_server.url}/api/messages/{cand['id']}", live_server.headers(key)
    vote = {"value": "up", "reasons": ["clear", "helpful"], "comment": "nice"}
    r = httpx.put(f"{url}/thumbs", json=vote, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["value"] == "up" and r.json()["reasons"] == ["clear", "helpful"]
    # The same vote again (reasons in another order) changes nothing and logs nothing.
    vote["reasons"] = ["helpful", "clear"]
    assert httpx.put(f"{url}/thumbs", json=vote, headers=h).status_code == 200
    assert len(events_of(live_server, uid)) == 1
    httpx.put(f"{url}/thumbs", json={"value": "down", "reasons": ["too_long"]}, headers=h)
    message = httpx.get(url, headers=h).json()
    assert message["thumbs"]["value"] == "down" and message["reward"] is None
    assert httpx.delete(f"{url}/thumbs", headers=h).status_code == 204
    assert httpx.delete(f"{url}/thumbs", headers=h).status_code == 204
    assert httpx.get(url, headers=h).json()["thumbs"] is None
    kinds = [(e["kind"], e["value"]) for e in events_of(live_server, uid)]
    assert kinds == [("thumbs", "up"), ("thumbs", "down"), ("thumbs_clear", None)]
    assert all(e["message_ids"] == [cand["id"]] and e["training_run_id"] is None
               for e in events_of(live_server, uid))


def test_thumbs_bad_input_is_400_or_404_never_500(live_server, alice):
    key, uid = alice
    turn, (cand, _) = seed_turn(live_server, uid)
    _, (foreign, _) = seed_turn(live_server, user_id(live_server, live_server.add_user("bob")))
    h = live_server.headers(key)

    def put(message_id, body):
        return httpx.put(f"{live_server.url}/api/messages/{message_id}/thumbs", json=body,
                         headers=h)

    cases = [
        (cand["id"], {"value": "up", "reasons": ["sparkly"]}, 400, "sparkly"),
        (cand["id"], {"value": "down", "reasons": ["helpful"]}, 400, "helpful"),
        (cand["id"], {"value": "meh"}, 400, "value"),
        (cand["id"], {}, 400, "value"),
        (cand["id"], {"value": "up", "reasons": "clear"}, 400, "reasons"),
        (cand["id"], {"value": "up", "comment": 5}, 400, "comment"),
        (cand["id"], {"value": "up", "reason": ["clear"]}, 400, "reason"),
        (turn["id"], {"value": "up"}, 400, "user turn"),
        (foreign["id"], {"value": "up"}, 404, "not found"),
        (999999, {"value": "up"}, 404, "not found"),
        (2**70, {"value": "up"}, 404, "not found"),
    ]
    for message_id, body, status, words in cases:
        r = put(message_id, body)
        assert r.status_code == status, (body, r.text)
        assert words in r.json()["detail"], (body, r.text)
    r = httpx.get(f"{live_server.url}/api/messages/{foreign['id']}", headers=h)
    assert r.status_code == 404
    assert httpx.delete(f"{live_server.url}/api/messages/{foreign['id']}/thumbs",
                        headers=h).status_code == 404
    assert events_of(live_server, uid) == []


def test_concurrent_votes_leave_one_current_vote(live_server, alice):
    key, uid = alice
    _, (cand, _) = seed_turn(live_server, uid)
    url = f"{live_server.url}/api/messages/{cand['id']}/thumbs"

    async def storm():
        async with httpx.AsyncClient(headers=live_server.headers(key), timeout=30) as client:
            return await asyncio.gather(*[
                client.put(url, json={"value": "up" if i % 2 else "down"}) for i in range(40)])

    assert {r.status_code for r in asyncio.run(storm())} == {200}
    rows = live_server.state.store.write_sync(
        lambda db: list(db["thumbs"].rows_where("message_id = ?", [cand["id"]])))
    assert len(rows) == 1
    last = events_of(live_server, uid)[-1]
    assert rows[0]["event_id"] == last["id"] and rows[0]["value"] == last["value"]


def test_comparison_chooses_branch_and_is_idempotent(live_server, alice):
    key, uid = alice
    h = live_server.headers(key)
    r = httpx.post(f"{live_server.url}/api/chat", headers=h, timeout=60,
                   json={"content": "Hi", "n": 2, "max_tokens": 4})
    a, b = (c["id"] for c in r.json()["candidates"])
    turn_id = r.json()["message"]["id"]
    url = f"{live_server.url}/api/comparisons"
    r = httpx.post(url, headers=h, json={"message_ids": [a, b], "choice": "b",
                                         "reasons": ["concise"]})
    assert r.status_code == 200, r.text
    assert chosen_ids(live_server, turn_id) == [b]
    # Again, and the same judgement shown the other way round: no new event.
    httpx.post(url, headers=h, json={"message_ids": [a, b], "choice": "b",
                                     "reasons": ["concise"]})
    httpx.post(url, headers=h, json={"message_ids": [b, a], "choice": "a",
                                     "reasons": ["concise"]})
    assert len(events_of(live_server, uid)) == 1
    r = httpx.post(url, headers=h, json={"message_ids": [a, b], "choice": "tie"})
    assert r.json()["choice"] == "tie"
    assert chosen_ids(live_server, turn_id) == [b]
    assert len(events_of(live_server, uid)) == 2
    me = httpx.get(f"{live_server.url}/api/me", headers=h).json()
    assert me["counts"]["comparisons"] == 1 and me["counts"]["events_since_last_training"] == 2


def test_comparison_and_ranking_bad_input(live_server, alice):
    key, uid = alice
    h = live_server.headers(key)
    turn, (a, b, c) = seed_turn(live_server, uid, n=3)
    _, (other, _) = seed_turn(live_server, uid, conversation_id=turn["conversation_id"])
    _, (foreign, _) = seed_turn(live_server, user_id(live_server, live_server.add_user("bob")))
    compare = [
        ({"message_ids": [a["id"]], "choice": "a"}, 400, "message_ids"),
        ({"message_ids": [a["id"], b["id"], c["id"]], "choice": "a"}, 400, "message_ids"),
        ({"message_ids": [a["id"], a["id"]], "choice": "a"}, 400, "duplicate"),
        ({"message_ids": "1,2", "choice": "a"}, 400, "message_ids"),
        ({"message_ids": [a["id"], other["id"]], "choice": "a"}, 400, "same user turn"),
        ({"message_ids": [a["id"], turn["id"]], "choice": "a"}, 400, "user turn"),
        ({"message_ids": [a["id"], b["id"]], "choice": "left"}, 400, "choice"),
        ({"message_ids": [a["id"], b["id"]], "choice": "a", "reasons": ["x"]}, 400, "'x'"),
        ({"message_ids": [a["id"], foreign["id"]], "choice": "a"}, 404, "not found"),
        ({"message_ids": [a["id"], 10**9], "choice": "a"}, 404, "not found"),
    ]
    rank = [
        ({"message_ids": [a["id"]]}, 400, "message_ids"),
        ({"message_ids": [a["id"], b["id"], a["id"]]}, 400, "duplicate"),
        ({"message_ids": [[a["id"], b["id"]], c["id"]]}, 400, "ties"),
        ({"message_ids": [a["id"], other["id"]]}, 400, "same user turn"),
        ({"message_ids": [a["id"], foreign["id"]]}, 404, "not found"),
    ]
    for path, cases in (("comparisons", compare), ("rankings", rank)):
        for body, status, words in cases:
            r = httpx.post(f"{live_server.url}/api/{path}", headers=h, json=body)
            assert r.status_code == status, (path, body, r.text)
            assert words in r.json()["detail"], (path, body, r.text)
    assert events_of(live_server, uid) == []


def test_ranking_chooses_best_and_replaces(live_server, alice):
    key, uid = alice
    h = live_server.headers(key)
    turn, cands = seed_turn(live_server, uid, n=3)
    a, b, c = (x["id"] for x in cands)
    url = f"{live_server.url}/api/rankings"
    r = httpx.post(url, headers=h, json={"message_ids": [c, a, b]})
    assert r.status_code == 200, r.text
    assert r.json()["message_ids"] == [c, a, b]
    assert chosen_ids(live_server, turn["id"]) == [c]
    httpx.post(url, headers=h, json={"message_ids": [c, a, b]})
    assert len(events_of(live_server, uid)) == 1
    httpx.post(url, headers=h, json={"message_ids": [b, c]})
    assert chosen_ids(live_server, turn["id"]) == [b]
    rows = live_server.state.store.write_sync(fb.rankings, uid)
    assert [r["message_ids"] for r in rows] == [[b, c]]
    assert [e["kind"] for e in events_of(live_server, uid)] == ["ranking", "ranking"]


def test_me_counts_adapter_run_and_rotate_key(live_server, alice):
    key, uid = alice
    h = live_server.headers(key)
    _, (a, b) = seed_turn(live_server, uid)
    httpx.put(f"{live_server.url}/api/messages/{a['id']}/thumbs", json={"value": "up"}, headers=h)
    httpx.put(f"{live_server.url}/api/messages/{b['id']}/thumbs", json={"value": "down"},
              headers=h)

    def train(db):
        # A run as the worker leaves it: queued, claimed, version 1 promoted, events used.
        runs.enqueue(db, uid, True, "test")
        run = runs.claim_next(db, os.getpid())
        created = now()
        db["adapter_versions"].insert({"user_id": uid, "version": 1, "path": "alice/1",
                                       "created_at": created})
        db["users"].update(uid, {"current_version": 1})
        used = fb.mark_events_used(db, uid, [e["id"] for e in fb.new_events(db, uid)][:1],
                                   run["id"])
        runs.finish(db, run["id"], "succeeded", adapter_version=1, events_used=used)
        return runs.get_run(db, run["id"]), created

    run, created = live_server.state.store.write_sync(train)
    me = httpx.get(f"{live_server.url}/api/me", headers=h).json()
    assert (me["id"], me["name"], me["role"]) == (uid, "alice", "user")
    assert me["counts"] == {"thumbs_up": 1, "thumbs_down": 1, "comparisons": 0,
                            "rankings": 0, "events_since_last_training": 1,
                            "effective_new_labels": 1}
    assert me["current_version"] == 1
    assert me["adapter"] == {"version": 1, "created_at": created}
    assert me["last_training_run"]["status"] == "succeeded"
    assert me["last_training_run"]["finished_at"] == run["finished_at"] >= created
    assert "reward_head" in me
    r = httpx.post(f"{live_server.url}/api/me/rotate-key", headers=h)
    assert r.status_code == 200
    assert httpx.get(f"{live_server.url}/api/me", headers=h).status_code == 401
    new = live_server.headers(r.json()["api_key"])
    assert httpx.get(f"{live_server.url}/api/me", headers=new).json()["id"] == uid
