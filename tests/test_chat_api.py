"""The native chat API: turns, candidates, history, streaming and bad input."""

import json

import httpx
import pytest


@pytest.fixture
def alice(live_server):
    return live_server.headers(live_server.add_user("alice"))


def chat(live, headers, **body):
    return httpx.post(f"{live.url}/api/chat", headers=headers, json=body, timeout=60)


def test_multi_turn_follows_chosen_branch(live_server, alice):
    first = chat(live_server, alice, content="first question", max_tokens=4).json()
    conv_id = first["conversation_id"]
    second = chat(live_server, alice, content="second question", conversation_id=conv_id,
                  max_tokens=4, n=2).json()
    assert second["message"]["parent_id"] == first["candidates"][0]["id"]
    detail = httpx.get(f"{live_server.url}/api/conversations/{conv_id}", headers=alice).json()
    assert [t["content"] for t in detail["turns"]] == ["first question", "second question"]
    assert len(detail["turns"][1]["candidates"]) == 2
    # the stored prompt of the second turn counts both turns' tokens
    assert second["candidates"][0]["prompt_tokens"] > first["candidates"][0]["prompt_tokens"]


def test_candidates_record_generation_details(live_server, alice):
    body = chat(live_server, alice, content="hello", n=3, max_tokens=5, temperature=1.2,
                top_p=0.9, frequency_penalty=0.5, seed=11).json()
    cands = body["candidates"]
    assert [c["candidate_index"] for c in cands] == [0, 1, 2]
    assert [c["chosen"] for c in cands] == [1, 0, 0]
    for c in cands:
        assert c["temperature"] == 1.2 and c["top_p"] == 0.9 and c["max_tokens"] == 5
        assert (c["frequency_penalty"], c["presence_penalty"], c["seed"]) == (0.5, 0.0, 11)
        assert 1 <= c["completion_tokens"] <= 5 and c["finish_reason"] in {"stop", "length"}
        assert c["total_ms"] >= c["first_token_ms"] > 0


def test_streaming_sends_deltas_then_stored_candidates(live_server, alice):
    events = []
    with httpx.stream("POST", f"{live_server.url}/api/chat", headers=alice, timeout=60,
                      json={"content": "stream please", "n": 2, "max_tokens": 6,
                            "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for block in r.iter_text():
            events.append(block)
    text = "".join(events)
    parsed = [(b.split("\n")[0][7:], json.loads(b.split("\n")[1][6:]))
              for b in text.strip().split("\n\n")]
    kinds = [k for k, _ in parsed]
    assert kinds[0] == "start" and kinds[-1] == "done" and "delta" in kinds
    done = parsed[-1][1]
    for cand in done["candidates"]:
        streamed = "".join(p["text"] for k, p in parsed
                           if k == "delta" and p["index"] == cand["candidate_index"])
        assert streamed == cand["content"]


def test_regenerate_adds_a_chosen_candidate(live_server, alice):
    first = chat(live_server, alice, content="again?", max_tokens=4).json()
    turn_id = first["message"]["id"]
    again = chat(live_server, alice, regenerate=turn_id, max_tokens=4).json()
    assert again["candidates"][0]["candidate_index"] == 1
    assert again["candidates"][0]["chosen"] == 1
    detail = httpx.get(f"{live_server.url}/api/conversations/{first['conversation_id']}",
                       headers=alice).json()
    assert [c["chosen"] for c in detail["turns"][0]["candidates"]] == [0, 1]


def test_conversations_are_private_and_deletable(live_server, alice):
    bob = live_server.headers(live_server.add_user("bob"))
    conv_id = chat(live_server, alice, content="secret", max_tokens=3).json()["conversation_id"]
    url = f"{live_server.url}/api/conversations/{conv_id}"
    assert httpx.get(url, headers=bob).status_code == 404
    assert httpx.delete(url, headers=bob).status_code == 404
    r = chat(live_server, bob, content="hijack", conversation_id=conv_id, max_tokens=3)
    assert r.status_code == 404
    assert httpx.get(f"{live_server.url}/api/conversations", headers=bob).json() == []
    listing = httpx.get(f"{live_server.url}/api/conversations", headers=alice).json()
    assert [c["id"] for c in listing] == [conv_id] and listing[0]["title"] == "secret"
    assert httpx.delete(url, headers=alice).status_code == 204
    assert httpx.get(url, headers=alice).status_code == 404


@pytest.mark.parametrize("body, status, field", [
    ({"content": ""}, 400, "content"),
    ({"content": "x", "n": 0}, 400, "n"),
    ({"content": "x", "n": 4}, 400, "n"),
    ({"content": "x", "max_tokens": 100000}, 400, "max_tokens"),
    ({"content": "x", "temperature": "hot"}, 400, "temperature"),
    ({"content": "x", "model": "gpt-9"}, 400, "model"),
    ({"content": "x", "frequency_penalty": -2.5}, 400, "frequency_penalty"),
    ({"content": "x", "seed": "7"}, 400, "seed"),
    ({"content": "x", "stop": [1, 2]}, 400, "stop"),
    ({"content": "x" * 9000}, 413, "8000"),
    ({"content": "x", "conversation_id": "one"}, 400, "conversation_id"),
])
def test_bad_input_is_a_clear_4xx(live_server, alice, body, status, field):
    r = chat(live_server, alice, **body)
    assert r.status_code == status, r.text
    assert field in r.json()["detail"]


def test_malformed_json_is_400(live_server, alice):
    r = httpx.post(f"{live_server.url}/api/chat", headers=alice, content=b"{not json")
    assert r.status_code == 400
    r = httpx.post(f"{live_server.url}/api/chat", headers=alice, content=b"[1, 2]")
    assert 400 <= r.status_code < 500


def test_deleting_a_conversation_deletes_its_feedback(live_server, alice):
    body = chat(live_server, alice, content="rate me", n=2, max_tokens=3).json()
    a, b = (c["id"] for c in body["candidates"])
    url = live_server.url
    httpx.put(f"{url}/api/messages/{a}/thumbs", headers=alice, json={"value": "up"})
    httpx.post(f"{url}/api/comparisons", headers=alice,
               json={"message_ids": [a, b], "choice": "b"})
    httpx.post(f"{url}/api/rankings", headers=alice, json={"message_ids": [b, a]})
    import sqlite3

    db = sqlite3.connect(live_server.config.db_path)
    count = "select (select count(*) from thumbs) + (select count(*) from comparisons) + " \
            "(select count(*) from rankings) + (select count(*) from feedback_events)"
    assert db.execute(count).fetchone()[0] == 6
    httpx.delete(f"{url}/api/conversations/{body['conversation_id']}", headers=alice)
    assert db.execute(count).fetchone()[0] == 0


def test_real_model_answers_and_streams_the_same_text(real_server):
    """End to end on the real SmolLM2 base: a greedy answer, streamed and not, agrees."""
    h = real_server.headers(real_server.add_user("zoe"))
    body = {"content": "What is the capital of France? Answer in one sentence.",
            "temperature": 0, "max_tokens": 24}
    plain = chat(real_server, h, **body).json()["candidates"][0]
    assert "Paris" in plain["content"] and plain["model"] == "base"
    with httpx.stream("POST", f"{real_server.url}/api/chat", headers=h, timeout=120,
                      json={**body, "stream": True}) as r:
        text = "".join(r.iter_text())
    deltas = [json.loads(b.split("\n")[1][6:])["text"] for b in text.strip().split("\n\n")
              if b.startswith("event: delta")]
    assert "".join(deltas) == plain["content"]
