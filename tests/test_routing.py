"""Routing: each user's requests go through their own current adapter version."""

import httpx
from peft import LoraConfig, get_peft_model

from feedback_store.db import connect
from tests.conftest import make_tiny_model


def save_random_adapter(tokenizer, path, seed: int) -> None:
    """A LoRA with random (non-zero) A and B, so it visibly changes the model's output."""
    model = get_peft_model(make_tiny_model(tokenizer), LoraConfig(
        r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
        init_lora_weights=False))
    import torch

    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(param, std=0.5)
    model.save_pretrained(path)


def register(live, user_name: str, version: int, src) -> None:
    """Record a version the way the registry does: a row plus users.current_version."""
    import shutil

    dest = live.config.adapters_dir / user_name / str(version)
    shutil.copytree(src, dest)
    db = connect(live.config.db_path)
    user = next(db["users"].rows_where("name = ?", [user_name]))
    with db.conn:
        db["adapter_versions"].insert({"user_id": user["id"], "version": version,
                                       "path": f"{user_name}/{version}", "base_id": "tiny"})
        db["users"].update(user["id"], {"current_version": version})
    db.close()


def greedy(live, key: str, prompt: str = "Tell me about cats.") -> dict:
    r = httpx.post(f"{live.url}/api/chat", headers=live.headers(key), timeout=60,
                   json={"content": prompt, "temperature": 0, "max_tokens": 12})
    assert r.status_code == 200, r.text
    return r.json()["candidates"][0]


def test_adapter_changes_one_users_answers_at_once(live_server, tokenizer, tmp_path):
    alice, bob = live_server.add_user("alice"), live_server.add_user("bob")
    before_a, before_b = greedy(live_server, alice), greedy(live_server, bob)
    assert before_a["content"] == before_b["content"]          # same base, same greedy answer
    assert before_a["model"] == "base" and before_a["adapter_version"] is None

    save_random_adapter(tokenizer, tmp_path / "lora", seed=1)
    register(live_server, "alice", 1, tmp_path / "lora")

    after_a, after_b = greedy(live_server, alice), greedy(live_server, bob)
    assert after_a["model"] == "personal" and after_a["adapter_version"] == 1
    assert after_a["content"] != before_a["content"]
    assert after_b["content"] == before_b["content"] and after_b["model"] == "base"
    # model="base" bypasses the adapter even for alice
    r = httpx.post(f"{live_server.url}/api/chat", headers=live_server.headers(alice),
                   json={"content": "Tell me about cats.", "temperature": 0, "max_tokens": 12,
                         "model": "base"}, timeout=60)
    assert r.json()["candidates"][0]["content"] == before_a["content"]


def test_new_version_replaces_old_in_memory(live_server, tokenizer, tmp_path):
    alice = live_server.add_user("alice")
    save_random_adapter(tokenizer, tmp_path / "v1", seed=1)
    save_random_adapter(tokenizer, tmp_path / "v2", seed=2)
    register(live_server, "alice", 1, tmp_path / "v1")
    first = greedy(live_server, alice)
    register(live_server, "alice", 2, tmp_path / "v2")
    second = greedy(live_server, alice)
    assert (first["adapter_version"], second["adapter_version"]) == (1, 2)
    assert first["content"] != second["content"]
    admin = live_server.headers(live_server.admin_key)
    health = httpx.get(f"{live_server.url}/health", headers=admin).json()
    loaded = health["adapter_cache"]["loaded"]
    assert [name.endswith("v2") for name in loaded] == [True]


def test_lru_cache_is_bounded(live_server, tokenizer, tmp_path):
    capacity = live_server.state.engine.cache_size
    save_random_adapter(tokenizer, tmp_path / "lora", seed=3)
    for i in range(capacity + 2):
        key = live_server.add_user(f"user{i}")
        register(live_server, f"user{i}", 1, tmp_path / "lora")
        assert greedy(live_server, key, "hi")["model"] == "personal"
    cache = httpx.get(f"{live_server.url}/health",
                       headers=live_server.headers(live_server.admin_key)).json()["adapter_cache"]
    assert len(cache["loaded"]) == capacity
    assert cache["evictions"] == 2
