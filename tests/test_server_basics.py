"""Health, auth and the native chat API on a real loopback server (tiny model)."""

import httpx


def test_health_needs_no_key(live_server):
    r = httpx.get(f"{live_server.url}/health")
    assert r.status_code == 200
    body = r.json()
    assert body["base_model"] == "tiny-llama@test"
    assert body["adapter_cache"]["capacity"] == 4


def test_chat_stores_turn_and_candidates(live_server):
    key = live_server.add_user("alice")
    r = httpx.post(f"{live_server.url}/api/chat", headers=live_server.headers(key),
                   json={"content": "Hello there", "n": 2, "max_tokens": 8}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"]["content"] == "Hello there"
    assert len(body["candidates"]) == 2
    assert {c["model"] for c in body["candidates"]} == {"base"}
