"""A missing or corrupt adapter: the user's chat is served by the last good version (or the
base), the answer says so, the admin sees the failure, and no error shows a path (item 7)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.test_openai_api import client, give_adapter

HI = [{"role": "user", "content": "hi"}]


def add_version(live, name: str, version: int, folder: str) -> None:
    """Register `folder` (under adapters_dir) as `name`'s version and serve it."""
    def register(db) -> None:
        user = next(db["users"].rows_where("name = ?", [name]))
        db["adapter_versions"].insert({"user_id": user["id"], "version": version,
                                       "path": folder, "base_id": "tiny"})
        db["users"].update(user["id"], {"current_version": version})

    live.state.store.write_sync(register)


def no_paths(live, text: str) -> None:
    assert str(live.config.data_dir) not in text and "/adapters/" not in text, text


def test_missing_version_falls_back_to_the_last_good_one(live_server, tokenizer):
    live = live_server
    key = live.add_user("alice")
    give_adapter(live, tokenizer, "alice")          # version 1: a real LoRA
    add_version(live, "alice", 2, "alice/2")         # version 2: no files at all
    r = httpx.post(f"{live.url}/api/chat", headers=live.headers(key), timeout=60,
                   json={"content": "hello", "max_tokens": 4})
    assert r.status_code == 200, r.text
    no_paths(live, r.text)
    body = r.json()
    assert body["adapter_version"] == 1 and body["adapter_fallback_from"] == 2
    assert "version 2 could not be loaded" in body["notice"] and "version 1" in body["notice"]
    stored = body["candidates"][0]
    assert (stored["model"], stored["adapter_version"], stored["adapter_fallback_from"]) == \
        ("personal", 1, 2)
    detail = httpx.get(f"{live.url}/api/conversations/{body['conversation_id']}",
                       headers=live.headers(key)).json()
    assert detail["turns"][0]["candidates"][0]["adapter_fallback_from"] == 2

    admin = live.headers(live.admin_key)
    alice = next(u for u in httpx.get(f"{live.url}/admin/users", headers=admin).json()
                 if u["name"] == "alice")
    [failure] = alice["adapter_failures"]
    assert failure["version"] == 2 and "adapter_config.json" in failure["error"]
    no_paths(live, json.dumps(failure))
    health = httpx.get(f"{live.url}/health", headers=admin).json()
    assert [f["version"] for f in health["adapter_failures"]] == [2]

    # Known broken: the next turn goes straight to version 1 without touching the disk.
    misses = live.state.engine.stats["misses"]
    again = httpx.post(f"{live.url}/api/chat", headers=live.headers(key), timeout=60,
                       json={"content": "again", "max_tokens": 4}).json()
    assert again["adapter_version"] == 1 and again["adapter_fallback_from"] == 2
    assert live.state.engine.stats["misses"] == misses


def test_corrupt_only_version_falls_back_to_the_base_in_both_apis(live_server):
    live = live_server
    key = live.add_user("bob")
    folder = live.config.adapters_dir / "bob" / "1"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{not json")
    (folder / "adapter_model.safetensors").write_bytes(b"garbage")
    add_version(live, "bob", 1, "bob/1")

    api = client(live, key)
    done = api.chat.completions.create(model="personal", messages=HI, max_tokens=4)
    extra = done.model_dump()
    assert done.model == "base" and extra["adapter_version"] is None
    assert extra["adapter_fallback_from"] == 1 and "the base model" in extra["notice"]
    no_paths(live, json.dumps(extra))

    chunks = list(api.chat.completions.create(model="personal", messages=HI, max_tokens=4,
                                              stream=True))
    last = chunks[-1].model_dump()["choices"][0]
    assert last["adapter_fallback_from"] == 1 and last["adapter_version"] is None

    r = httpx.post(f"{live.url}/api/chat", headers=live.headers(key), timeout=60,
                   json={"content": "hello", "max_tokens": 4, "stream": True})
    assert r.status_code == 200 and "event: done" in r.text, r.text
    done_event = json.loads(r.text.split("event: done\ndata: ")[1].split("\n")[0])
    assert done_event["adapter_fallback_from"] == 1 and done_event["notice"]
    no_paths(live, r.text)

    # The base still answers normally for everyone after the failed load.
    other = client(live, live.add_user("carol"))
    assert other.chat.completions.create(model="personal", messages=HI, max_tokens=4).choices


def test_a_failed_load_is_retried_past_on_a_fresh_stream(live_server, tokenizer):
    """Streaming first (nothing cached yet): the fallback happens before any text is sent."""
    live = live_server
    key = live.add_user("dave")
    give_adapter(live, tokenizer, "dave")
    add_version(live, "dave", 2, "dave/gone")
    api = client(live, key)
    chunks = list(api.chat.completions.create(model="personal", messages=HI, max_tokens=4,
                                              stream=True))
    last = chunks[-1].model_dump()["choices"][0]
    assert (last["adapter_version"], last["adapter_fallback_from"]) == (1, 2)
    assert last["finish_reason"] in ("stop", "length")


def test_error_messages_never_carry_paths(live_server, monkeypatch):
    """Whatever raises, a 5xx message has its filesystem paths redacted."""
    from feedback_store.errors import ModelError

    live = live_server
    key = live.add_user("erin")

    def broken(*args, **kwargs):
        raise ModelError(f"could not open {live.config.data_dir}/cache/model.bin")

    monkeypatch.setattr(live.state.engine, "_run_batch", broken)
    r = httpx.post(f"{live.url}/api/chat", headers=live.headers(key), timeout=60,
                   json={"content": "hi", "max_tokens": 2, "model": "base"})
    assert r.status_code == 500 and "<path>" in r.json()["detail"], r.text
    no_paths(live, r.text)
    with pytest.raises(openai.InternalServerError) as caught:
        client(live, key).chat.completions.create(model="base", messages=HI, max_tokens=2)
    no_paths(live, json.dumps(caught.value.body))
