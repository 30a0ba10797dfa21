"""The UI's data routes (assistant/routes_insights.py) over real HTTP on a tiny model:
insights, side-by-side examples, verdicts, titles, edits, admin feedback counts, favicon."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from seed_learning import add_run, gate, seed

from assistant.engine import Candidate, GenResult


def api(live, key: str, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, live.url + path, headers=live.headers(key), timeout=60, **kw)


def chat(live, key: str, content: str, **body) -> dict:
    r = api(live, key, "POST", "/api/chat", json={"content": content, "max_tokens": 3, **body})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def user(live_server):
    key = live_server.add_user("ursula")
    me = api(live_server, key, "GET", "/api/me").json()
    return key, me["id"]


def test_insights_of_a_new_user(live_server, user):
    key, _ = user
    chat(live_server, key, "Hello")
    r = api(live_server, key, "GET", "/api/me/insights")
    assert r.status_code == 200, r.text
    body = r.json()
    needed = live_server.config.training.min_new_events
    assert body["training"] == {"new_labels": 0, "needed": needed, "remaining": needed,
                                "active_run": None}
    assert body["versions"] == []
    assert body["reward"]["head"] is None and body["reward"]["likes"] == []


def test_insights_after_training(live_server, user):
    key, user_id = user
    ids = [chat(live_server, key, f"Question {i}")["candidates"][0]["id"] for i in range(5)]
    scores = {ids[0]: 0.1, ids[1]: 2.0, ids[2]: -1.5, ids[3]: 0.7}        # ids[4]: not cached
    seed(live_server.config.db_path, live_server.config.adapters_dir, user_id,
         live_server.state.engine.base_id, scores)
    r = api(live_server, key, "PUT", f"/api/messages/{ids[0]}/thumbs", json={"value": "up"})
    assert r.status_code == 200
    body = api(live_server, key, "GET", "/api/me/insights").json()
    assert body["training"]["new_labels"] == 1
    assert [(v["status"], v["version"], v["gate"]["win_rate"]) for v in body["versions"]] == [
        ("rejected", None, 0.25), ("succeeded", 1, 0.75)]
    assert body["versions"][1]["gate"]["baseline"] == "base"
    reward = body["reward"]
    assert reward["head"]["cv_accuracy"] == 0.75
    assert (reward["scored"], reward["unscored"]) == (4, 1)
    assert [a["message_id"] for a in reward["likes"]] == [ids[1], ids[3]]
    assert [a["message_id"] for a in reward["dislikes"]] == [ids[2], ids[0]]
    assert reward["likes"][0]["prompt"] == "Question 1"
    assert reward["likes"][0]["score"] == pytest.approx(2.0)


def test_insights_give_each_version_against_the_base(live_server, user):
    """The gate's win rate is against the version it would replace; the page plots every
    version against the base, which the gate now records (win_rate_vs_base). A run recorded
    before that has it only when the base was its baseline."""
    key, user_id = user
    seed(live_server.config.db_path, live_server.config.adapters_dir, user_id,
         live_server.state.engine.base_id, {})
    add_run(live_server.config.db_path, user_id, gate(0.4, "current"))          # older run
    add_run(live_server.config.db_path, user_id,
            {**gate(0.45, "current"), "win_rate_vs_base": 0.8})
    body = api(live_server, key, "GET", "/api/me/insights").json()
    assert [(v["gate"]["baseline"], v["gate"]["win_rate"], v["gate"]["win_rate_vs_base"])
            for v in body["versions"]] == [
        ("base", 0.25, 0.25), ("base", 0.75, 0.75), ("current", 0.4, None),
        ("current", 0.45, 0.8)]


def test_insights_are_private(live_server, user):
    key, user_id = user
    other = live_server.add_user("olga")
    mid = chat(live_server, key, "Mine")["candidates"][0]["id"]
    seed(live_server.config.db_path, live_server.config.adapters_dir, user_id,
         live_server.state.engine.base_id, {mid: 1.0})
    body = api(live_server, other, "GET", "/api/me/insights").json()
    assert body["versions"] == [] and body["reward"]["head"] is None


def test_examples_need_a_version(live_server, user):
    key, _ = user
    chat(live_server, key, "Hi")
    r = api(live_server, key, "POST", "/api/me/examples")
    assert r.status_code == 200
    assert r.json()["examples"] == [] and "no personal version" in r.json()["reason"]


def test_examples_compare_base_and_mine_once_per_version(live_server, user):
    key, user_id = user
    for text in ("Tell me a joke", "Explain rain", "Tell me a joke"):
        chat(live_server, key, text)
    seed(live_server.config.db_path, live_server.config.adapters_dir, user_id,
         live_server.state.engine.base_id, {})
    calls = []

    async def fake_generate(req):
        calls.append(req)
        who = "mine" if req.adapter else "base"
        await asyncio.sleep(0)
        text = f"{who}: {req.messages[-1]['content']}"
        return GenResult([Candidate(index=0, text=text, finish_reason="stop")], 3, req.adapter)

    live_server.state.engine.generate = fake_generate
    r = api(live_server, key, "POST", "/api/me/examples")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 1
    prompts = sorted(x["prompt"] for x in body["examples"])
    assert prompts == ["Explain rain", "Tell me a joke"]               # each prompt once
    for x in body["examples"]:
        assert x["base"] == f"base: {x['prompt']}" and x["mine"] == f"mine: {x['prompt']}"
    assert {(c.temperature, c.adapter.version if c.adapter else None) for c in calls} == {
        (0.0, None), (0.0, 1)}                                          # greedy, both sides
    n = len(calls)
    assert api(live_server, key, "POST", "/api/me/examples").json() == body
    assert len(calls) == n                                              # cached per version


def test_verdicts_of_a_conversation(live_server, user):
    key, _ = user
    turn = chat(live_server, key, "Pick one", n=3)
    a, b, c = (x["id"] for x in turn["candidates"])
    conv_id = turn["conversation_id"]
    assert api(live_server, key, "POST", "/api/comparisons",
               json={"message_ids": [a, b], "choice": "both_bad"}).status_code == 200
    assert api(live_server, key, "POST", "/api/rankings",
               json={"message_ids": [c, a, b]}).status_code == 200
    r = api(live_server, key, "GET", f"/api/conversations/{conv_id}/verdicts")
    assert r.json() == [{"kind": "comparison", "message_ids": [a, b], "choice": "both_bad"},
                        {"kind": "ranking", "message_ids": [c, a, b], "choice": None}]
    other = live_server.add_user("olga")
    assert api(live_server, other, "GET",
               f"/api/conversations/{conv_id}/verdicts").status_code == 404


def test_rename_conversation(live_server, user):
    key, _ = user
    conv_id = chat(live_server, key, "Untitled thoughts")["conversation_id"]
    r = api(live_server, key, "PUT", f"/api/conversations/{conv_id}/title",
            json={"title": "  Trip   plans "})
    assert r.status_code == 200 and r.json()["title"] == "Trip plans"
    assert api(live_server, key, "GET", "/api/conversations").json()[0]["title"] == "Trip plans"
    r = api(live_server, key, "PUT", f"/api/conversations/{conv_id}/title", json={"title": " "})
    assert r.status_code == 400 and "title" in r.json()["detail"]
    other = live_server.add_user("olga")
    assert api(live_server, other, "PUT", f"/api/conversations/{conv_id}/title",
               json={"title": "Mine now"}).status_code == 404


def test_edit_makes_a_new_branch(live_server, user):
    key, _ = user
    first = chat(live_server, key, "First question")
    conv_id = first["conversation_id"]
    second = chat(live_server, key, "Second question", conversation_id=conv_id)
    edited = chat(live_server, key, "Second question, better", edit=second["message"]["id"])
    assert edited["conversation_id"] == conv_id
    assert edited["message"]["parent_id"] == second["message"]["parent_id"]
    assert edited["message"]["parent_id"] == first["candidates"][0]["id"]
    detail = api(live_server, key, "GET", f"/api/conversations/{conv_id}").json()
    assert [t["content"] for t in detail["turns"]] == [
        "First question", "Second question", "Second question, better"]
    # The next message follows the edited branch.
    third = chat(live_server, key, "Go on", conversation_id=conv_id)
    assert third["message"]["parent_id"] == edited["candidates"][0]["id"]
    r = api(live_server, key, "POST", "/api/chat",
            json={"content": "x", "edit": first["candidates"][0]["id"]})
    assert r.status_code == 400 and "edit" in r.json()["detail"]
    other = live_server.add_user("olga")
    r = api(live_server, other, "POST", "/api/chat",
            json={"content": "x", "edit": second["message"]["id"]})
    assert r.status_code == 404


def test_follow_continues_the_branch_on_screen(live_server, user):
    key, _ = user
    first = chat(live_server, key, "Start", n=2)
    conv_id = first["conversation_id"]
    a, b = (c["id"] for c in first["candidates"])
    after_b = chat(live_server, key, "Go on from B", conversation_id=conv_id, follow=b)
    assert after_b["message"]["parent_id"] == b
    after_a = chat(live_server, key, "Default follows the chosen", conversation_id=conv_id)
    assert after_a["message"]["parent_id"] == after_b["candidates"][0]["id"]
    other_conv = chat(live_server, key, "Elsewhere")
    r = api(live_server, key, "POST", "/api/chat", json={
        "content": "x", "conversation_id": conv_id, "follow": other_conv["candidates"][0]["id"]})
    assert r.status_code == 400 and "follow" in r.json()["detail"]
    r = api(live_server, key, "POST", "/api/chat",
            json={"content": "x", "conversation_id": conv_id, "follow": first["message"]["id"]})
    assert r.status_code == 400


def test_feedback_counts_for_admins_only(live_server, user):
    key, user_id = user
    mid = chat(live_server, key, "Hi")["candidates"][0]["id"]
    api(live_server, key, "PUT", f"/api/messages/{mid}/thumbs", json={"value": "down"})
    assert api(live_server, key, "GET", "/admin/feedback-counts").status_code == 403
    counts = api(live_server, live_server.admin_key, "GET", "/admin/feedback-counts").json()
    assert counts[str(user_id)]["thumbs_down"] == 1
    assert counts[str(user_id)]["events_since_last_training"] == 1


def test_forced_retrain_needs_some_feedback(live_server, user):
    r = api(live_server, live_server.admin_key, "POST", "/admin/train",
            json={"user": "ursula", "force": True})
    assert r.status_code == 400 and "no feedback" in r.json()["detail"]


def test_me_gives_the_limits_the_ui_checks(live_server, user):
    key, _ = user
    limits = api(live_server, key, "GET", "/api/me").json()["limits"]
    assert limits["max_prompt_chars"] == live_server.config.server.max_prompt_chars
    assert limits["rl_steps"] == live_server.config.training.steps


def test_favicon(live_server):
    r = httpx.get(live_server.url + "/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")


def test_answer_length_setting(live_server, user):
    """The answer length lives on the server per user: validated, private, erased and
    exported with the user's data, and the default max_tokens of their chats."""
    key, _ = user
    assert api(live_server, key, "GET", "/api/me/settings").json() == {"answer_length": "normal"}
    for bad, field in (({"answer_length": "huge"}, "answer_length"),
                       ({"answer_length": 3}, "answer_length"),
                       ({"answer_length": []}, "answer_length"),
                       ({"colour": "blue"}, "colour"), ({}, "body")):
        r = api(live_server, key, "PUT", "/api/me/settings", json=bad)
        assert r.status_code == 400 and field in r.json()["detail"], (bad, r.text)
    r = api(live_server, key, "PUT", "/api/me/settings", json={"answer_length": "short"})
    assert r.status_code == 200 and r.json() == {"answer_length": "short"}
    assert api(live_server, key, "GET", "/api/me/settings").json() == {"answer_length": "short"}
    assert api(live_server, key, "GET", "/api/me/export").json()["settings"] == {
        "answer_length": "short"}
    other = live_server.add_user("olga")
    assert api(live_server, other, "GET", "/api/me/settings").json() == {
        "answer_length": "normal"}

    asked = []

    async def fake_generate(req):
        asked.append(req.max_tokens)
        await asyncio.sleep(0)
        return GenResult([Candidate(index=0, text="ok", finish_reason="stop")], 3, req.adapter)

    live_server.state.engine.generate = fake_generate
    g = live_server.config.generation
    for who, body in ((key, {}), (key, {"max_tokens": 7}), (other, {})):
        r = api(live_server, who, "POST", "/api/chat", json={"content": "Hi", **body})
        assert r.status_code == 200, r.text
    assert asked == [max(min(16, g.max_tokens_default), round(g.max_tokens_default / 2)), 7,
                     g.max_tokens_default]
