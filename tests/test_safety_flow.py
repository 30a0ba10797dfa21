"""The safety floor in a training run, on the tiny model: RL reward, gate, admin view, eval."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from tests.test_safety import hh_pairs, write_hh
from tests.test_training_flow import FAST, give_feedback, serve, train, wait

SAFE = {"ASSISTANT_SAFETY_ENABLED": "true", "ASSISTANT_SAFETY_REDTEAM_PROMPTS": 3,
        "ASSISTANT_SAFETY_MAX_TOKENS": 6, "ASSISTANT_SAFETY_FIT_PAIRS": 0,
        "ASSISTANT_TRAINING_PROMOTE_MARGIN": -1e9, "ASSISTANT_TRAINING_KL_BUDGET": 1e9}


@pytest.fixture
def safe_server(tmp_path, tiny_dir):
    data = write_hh(tmp_path / "hh.jsonl", hh_pairs())
    server, thread, live = serve(tmp_path, tiny_dir, **SAFE,
                                 ASSISTANT_SAFETY_MARGIN=1e9,
                                 ASSISTANT_SAFETY_REFUSAL_TOLERANCE=1.0,
                                 ASSISTANT_SAFETY_DPO_PAIRS=3,
                                 ASSISTANT_SAFETY_ONPOLICY_PROMPTS=2,
                                 ASSISTANT_SAFETY_DATA_FILE=data)
    yield live, data
    server.should_exit = True
    thread.join(timeout=10)


def test_a_run_fits_the_consensus_head_and_passes_the_floor(safe_server, tiny_dir,
                                                            tmp_path, monkeypatch, capsys):
    live, data = safe_server
    key = live.add_user("ivy")
    give_feedback(live, key)
    run = wait(live, train(live, "ivy")["id"])
    assert run["status"] == "succeeded", run["error"] or run["log_tail"]
    floor = run["metrics"]["safety"]
    assert floor["passed"] and floor["n_prompts"] == 3
    assert run["metrics"]["decision"].startswith("promoted")
    assert "safety floor passed" in run["metrics"]["decision"]
    assert set(floor["candidate"]) >= {"harmless_score", "refusal_rate"}
    assert "safety floor" in run["log_tail"] and "consensus head fitted" in run["log_tail"]
    heads = [p for p in (live.config.data_dir / "safety").iterdir() if not p.name.startswith(".")]
    assert len(heads) == 1 and (heads[0] / "base-redteam-6.json").exists()
    assert "safety_floor" in run["metrics"]["seconds"]
    # [safety] dpo_pairs: HH anchor pairs were fitted beside the user's in the DPO warm start
    dpo = run["metrics"]["dpo_steps"]
    assert any(s["anchor"] for s in dpo) and any(not s["anchor"] for s in dpo)
    assert "+3 safety anchor pairs" in run["log_tail"]
    # [safety] onpolicy_prompts: the candidate and the base answered 2 practice requests
    # after the warm start (on the random tiny model, whether any became a pair is chance)
    assert "of 2 practice requests" in run["log_tail"]
    assert list(heads[0].glob("base-practice-2-*.json"))

    # `assistant eval safety` on the promoted version: the JSON shape.
    from assistant import cli

    for k, v in {**FAST, **SAFE, "ASSISTANT_SAFETY_DATA_FILE": data,
                 "ASSISTANT_DATA_DIR": live.config.data_dir,
                 "ASSISTANT_MODEL_PATH": tiny_dir}.items():
        monkeypatch.setenv(k, str(v))
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "safety", "--user", "ivy", "--data", str(data), "--json",
                     str(out), "--limit", "5"]) == 0
    result = json.loads(out.read_text())
    assert result["n_pairs"] == 5 and result["n_prompts"] == 3
    for side in ("base", "adapter"):
        assert set(result[side]) >= {"pref_acc", "harmless_score", "refusal_rate"}
        assert 0 <= result[side]["pref_acc"] <= 1 and 0 <= result[side]["refusal_rate"] <= 1
    # the base's red-team answers are the gate's cached ones (greedy, same cap)
    cached = json.loads((heads[0] / "base-redteam-6.json").read_text())
    assert result["base"]["answers"] == cached["texts"]
    # ...and its preference accuracy on these pairs is kept next to the head: the next
    # check (another user's, or this one again) pays only for the adapter's side.
    kept = list(heads[0].glob("base-pref-*.json"))
    assert len(kept) == 1
    assert json.loads(kept[0].read_text())["pref_acc"] == result["base"]["pref_acc"]
    kept[0].write_text(json.dumps({"pref_acc": 0.123, "n_pairs": 5}))
    assert cli.main(["eval", "safety", "--user", "ivy", "--data", str(data), "--json",
                     str(out), "--limit", "5"]) == 0
    again = json.loads(out.read_text())
    assert again["base"]["pref_acc"] == 0.123
    assert again["adapter"]["pref_acc"] == result["adapter"]["pref_acc"]
    assert cli.main(["eval", "safety", "--user", "nobody-here", "--data", str(data)]) == 2
    assert "nobody-here" in capsys.readouterr().err


def test_the_floor_rejects_a_run_with_its_reason_shown_to_the_admin(tmp_path, tiny_dir,
                                                                      monkeypatch):
    """A candidate the floor fails is not promoted; the reason is the run's decision."""
    from adapters import safety
    from assistant.worker import execute
    from feedback_store import runs
    from feedback_store.db import open_db, transaction

    data = write_hh(tmp_path / "hh.jsonl", hh_pairs())
    server, thread, live = serve(tmp_path, tiny_dir, **SAFE, ASSISTANT_SAFETY_DATA_FILE=data)
    try:
        key = live.add_user("jack")
        give_feedback(live, key)
        reason = "rejected by the safety floor: refuses 0% of the red-team requests, the base 33%"
        monkeypatch.setattr(safety, "floor_check", lambda cand, base, s: (False, reason))
        db = open_db(live.config.db_path)
        transaction(db, runs.request_training, "jack", True, 1, "test")
        run = execute(live.config, transaction(db, runs.claim_next, os.getpid()), db,
                      echo=False)
        db.close()
        assert run["status"] == "rejected" and run["adapter_version"] is None
        assert run["metrics"]["decision"] == reason
        assert not run["metrics"]["safety"]["passed"]
        assert not (live.config.adapters_dir / "jack" / "1").exists()
        admin = live.headers(live.admin_key)
        listed = httpx.get(f"{live.url}/admin/runs", headers=admin).json()
        listed = listed["runs"] if isinstance(listed, dict) else listed
        assert any((r.get("metrics") or {}).get("decision") == reason for r in listed)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
