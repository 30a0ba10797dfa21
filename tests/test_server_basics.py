"""Health, auth and the native chat API on a real loopback server (tiny model)."""

import httpx


def test_health_needs_no_key_and_shows_adapters_to_the_admin_only(live_server):
    user_key = live_server.add_user("alice")
    for headers in ({}, live_server.headers(user_key), {"Authorization": "Bearer wrong"}):
        r = httpx.get(f"{live_server.url}/health", headers=headers)
        assert r.status_code == 200
        body = r.json()
        assert body["base_model"] == "tiny-llama@test"
        # Loaded adapters are named after user ids: admin-only detail.
        assert "adapter_cache" not in body and "adapter_failures" not in body
    admin = httpx.get(f"{live_server.url}/health",
                      headers=live_server.headers(live_server.admin_key)).json()
    assert admin["adapter_cache"]["capacity"] == 4 and admin["adapter_failures"] == []


def test_chat_stores_turn_and_candidates(live_server):
    key = live_server.add_user("alice")
    r = httpx.post(f"{live_server.url}/api/chat", headers=live_server.headers(key),
                   json={"content": "Hello there", "n": 2, "max_tokens": 8}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"]["content"] == "Hello there"
    assert len(body["candidates"]) == 2
    assert {c["model"] for c in body["candidates"]} == {"base"}
