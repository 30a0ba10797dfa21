"""Training through the server on a tiny model: a worker process runs the whole pipeline."""

import json
import time

import httpx
import pytest
from peft import PeftModel

from tests.conftest import make_tiny_model, start_server

FAST = {"ASSISTANT_TRAINING_STEPS": 2, "ASSISTANT_TRAINING_GROUP_SIZE": 2,
        "ASSISTANT_TRAINING_PROMPTS_PER_STEP": 1, "ASSISTANT_TRAINING_MAX_COMPLETION_TOKENS": 6,
        "ASSISTANT_TRAINING_MIN_NEW_EVENTS": 3, "ASSISTANT_TRAINING_THREADS": 1,
        "ASSISTANT_TRAINING_LEARNING_RATE": 0.05,
        # These tests are about the pipeline, not evidence (test_evidence_gate.py is).
        "ASSISTANT_TRAINING_MIN_HEAD_PAIRS": 0, "ASSISTANT_TRAINING_MIN_HEAD_ACCURACY": 0.0,
        "ASSISTANT_SAFETY_ENABLED": "false"}


def serve(tmp_path, tiny_dir, store_url: str = "", **env):
    from adapters.base_model import load_base
    from assistant.engine import Engine

    base = load_base(str(tiny_dir), tmp_path / "data" / "cache")
    engine = Engine(base.model, base.tokenizer, base.base_id, context_tokens=512, cache_size=4)
    return start_server(tmp_path / "data", engine, store_url, ASSISTANT_MODEL_PATH=tiny_dir,
                        **{**FAST, **env})


@pytest.fixture
def promoting(tmp_path, tiny_dir):
    """A server whose gate promotes any finite result (the margin is far below any gain)."""
    server, thread, live = serve(tmp_path, tiny_dir, ASSISTANT_TRAINING_PROMOTE_MARGIN=-1e9,
                                 ASSISTANT_TRAINING_KL_BUDGET=1e9)
    yield live
    server.should_exit = True
    thread.join(timeout=10)


def give_feedback(live, key: str, turns: int = 3) -> None:
    h = live.headers(key)
    for i in range(turns):
        body = httpx.post(f"{live.url}/api/chat", headers=h, timeout=60,
                          json={"content": f"question number {i}", "n": 2,
                                "max_tokens": 4}).json()
        a, b = (c["id"] for c in body["candidates"])
        r = httpx.post(f"{live.url}/api/comparisons", headers=h,
                       json={"message_ids": [a, b], "choice": "a"})
        assert r.status_code == 200, r.text


def train(live, user: str, force: bool = False) -> dict:
    admin = live.headers(live.admin_key)
    r = httpx.post(f"{live.url}/admin/train", headers=admin, json={"user": user, "force": force})
    assert r.status_code == 202, r.text
    return r.json()["queued"][0]


def wait(live, run_id: int, timeout: float = 240) -> dict:
    admin = live.headers(live.admin_key)
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = httpx.get(f"{live.url}/admin/runs/{run_id}", headers=admin).json()
        if run["status"] in ("succeeded", "rejected", "failed"):
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish: {run}")


def greedy(live, key: str) -> dict:
    r = httpx.post(f"{live.url}/api/chat", headers=live.headers(key), timeout=60,
                   json={"content": "question number 1", "temperature": 0, "max_tokens": 8})
    return r.json()["candidates"][0]


def test_run_trains_promotes_and_routes(promoting, tiny_dir):
    live = promoting
    key = live.add_user("alice")
    other = live.add_user("bob")
    give_feedback(live, key)
    before, bob_before = greedy(live, key), greedy(live, other)
    run = wait(live, train(live, "alice")["id"])
    assert run["status"] == "succeeded", run["error"] or run["log_tail"]
    assert run["adapter_version"] == 1 and run["events_used"] == 3
    steps = run["metrics"]["steps"]
    assert len(steps) == 2 and all(s["loss"] == s["loss"] for s in steps)  # finite, not NaN
    assert set(run["metrics"]["seconds"]) >= {"reward_head", "rl", "gate"}

    # the version is a plain PEFT directory with meta.json, and its LoRA weights moved
    version_dir = live.config.adapters_dir / "alice" / "1"
    assert (version_dir / "meta.json").exists()
    model = PeftModel.from_pretrained(make_tiny_model(live.state.engine.tokenizer), version_dir)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)   # B starts at zero

    after, bob_after = greedy(live, key), greedy(live, other)
    assert after["model"] == "personal" and after["adapter_version"] == 1
    assert bob_after["model"] == "base" and bob_after["content"] == bob_before["content"]
    assert before["model"] == "base"

    # events were consumed: nothing new, so a non-forced request is refused
    admin = live.headers(live.admin_key)
    r = httpx.post(f"{live.url}/admin/train", headers=admin, json={"user": "alice"})
    assert r.status_code == 400 and "0 new labels" in r.json()["detail"]
    me = httpx.get(f"{live.url}/api/me", headers=live.headers(key)).json()
    assert me["current_version"] == 1
    head = me["reward_head"]
    assert head["version"] == 1 and head["n_pairs"] == 3 and head["n_thumbs"] == 0
    assert 0.0 <= head["cv_accuracy"] <= 1.0
    # every stored answer of alice now has a reward from her head, bob's have none
    scored = httpx.get(f"{live.url}/api/messages/{after['id']}", headers=live.headers(key))
    assert isinstance(scored.json()["reward"], float)
    assert httpx.get(f"{live.url}/api/messages/{bob_after['id']}",
                     headers=live.headers(other)).json()["reward"] is None


def test_rollback_and_second_version(promoting):
    live = promoting
    key = live.add_user("carol")
    give_feedback(live, key)
    assert wait(live, train(live, "carol")["id"])["status"] == "succeeded"
    give_feedback(live, key)
    second = wait(live, train(live, "carol")["id"])
    assert second["status"] == "succeeded" and second["adapter_version"] == 2
    # version 2 starts from version 1, which already learned the first 3 pairs: its DPO
    # takes only the 3 new ones (2 epochs x 1 batch of <= 4 pairs), not all 6 (2 x 2)
    assert len(second["metrics"]["dpo_steps"]) == 2
    metas = [json.loads((live.config.adapters_dir / "carol" / v / "meta.json").read_text())
             for v in ("1", "2")]
    assert 0 < metas[0]["trained_through_event"] < metas[1]["trained_through_event"]
    admin = live.headers(live.admin_key)
    users = httpx.get(f"{live.url}/admin/users", headers=admin).json()
    carol = next(u for u in users if u["name"] == "carol")
    versions = httpx.get(f"{live.url}/admin/users/{carol['id']}/versions", headers=admin).json()
    assert [v["parent_version"] for v in versions] == [None, 1]
    r = httpx.post(f"{live.url}/admin/users/{carol['id']}/rollback", headers=admin,
                   json={"version": 1})
    assert r.status_code == 200 and r.json()["current_version"] == 1
    assert greedy(live, key)["adapter_version"] == 1
    bad = httpx.post(f"{live.url}/admin/users/{carol['id']}/rollback", headers=admin,
                     json={"version": 7})
    assert bad.status_code == 404


def test_unseen_pairs_are_those_with_an_event_after_the_serving_version():
    from adapters.jobs import unseen_pairs

    rows = [{"event_ids": [3]}, {"event_ids": [5, 9]}, {"event_ids": [10]}]
    assert unseen_pairs(rows, None) == rows
    assert unseen_pairs(rows, 5) == rows[1:]        # an up on 9 makes (up, old down) new
    assert unseen_pairs(rows, 10) == []


def test_gate_rejects_and_keeps_serving_base(tmp_path, tiny_dir):
    server, thread, live = serve(tmp_path, tiny_dir, ASSISTANT_TRAINING_PROMOTE_MARGIN=1e9)
    try:
        key = live.add_user("dave")
        give_feedback(live, key)
        run = wait(live, train(live, "dave")["id"])
        assert run["status"] == "rejected", run["error"]
        assert "does not exceed the margin" in run["metrics"]["decision"]
        assert run["adapter_version"] is None
        assert not (live.config.adapters_dir / "dave" / "1").exists()
        assert greedy(live, key)["model"] == "base"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_failed_run_leaves_previous_version_serving(promoting):
    live = promoting
    key = live.add_user("erin")
    give_feedback(live, key)
    assert wait(live, train(live, "erin")["id"])["status"] == "succeeded"
    # Break the serving version's neighbour: the next run starts from the current adapter,
    # so corrupting its config makes that run fail while loading it.
    config = live.config.adapters_dir / "erin" / "1" / "adapter_config.json"
    good = config.read_text()
    give_feedback(live, key)
    config.write_text("{not json")
    run = wait(live, train(live, "erin")["id"])
    config.write_text(good)
    assert run["status"] == "failed" and run["error"]
    # the real error, by type, not "the training process died"
    assert run["error"].split(":")[0].endswith("Error") and "died" not in run["error"]
    assert greedy(live, key)["adapter_version"] == 1
    # the failed run had saved reward head 2 before failing: it never became live
    assert run["reward_head_version"] == 2
    me = httpx.get(f"{live.url}/api/me", headers=live.headers(key)).json()
    assert me["reward_head"]["version"] == 1
    assert not (live.config.adapters_dir / "erin" / "2").exists()


def test_cli_train_runs_in_the_foreground(promoting, tiny_dir):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    live = promoting
    key = live.add_user("frank")
    give_feedback(live, key)
    env = {**os.environ, **{k: str(v) for k, v in FAST.items()},
           "ASSISTANT_DATA_DIR": str(live.config.data_dir), "ASSISTANT_MODEL_PATH": str(tiny_dir),
           "ASSISTANT_TRAINING_PROMOTE_MARGIN": "-1e9", "ASSISTANT_TRAINING_KL_BUDGET": "1e9",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "assistant", "train", "--user", "frank"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "succeeded, now serving version 1" in out.stdout
    assert "2/2" in out.stderr                        # the progress bar reached the last step
    assert greedy(live, key)["adapter_version"] == 1
