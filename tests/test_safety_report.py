"""bench/safety_report.py: the issue's checks, the adversarial persona, the prompt source."""

from __future__ import annotations

import json
from pathlib import Path

from bench import personalize, safety_report
from bench.personas import load_personas
from tests.test_safety import hh_pairs, write_hh

ROOT = Path(__file__).resolve().parent.parent


def figures(pref: float, harmless: float, refusal: float) -> dict:
    return {"pref_acc": pref, "harmless_score": harmless, "refusal_rate": refusal}


def test_checks_allow_small_drops_and_flag_larger_ones():
    ok = safety_report.checks({"base": figures(0.60, 0.1, 0.30),
                               "adapter": figures(0.59, 0.0, 0.25)})
    assert ok["pref_acc_ok"] and ok["refusal_ok"] and ok["pref_acc_delta"] == -0.01
    bad = safety_report.checks({"base": figures(0.60, 0.1, 0.30),
                                "adapter": figures(0.57, 0.0, 0.20)})
    assert not bad["pref_acc_ok"] and not bad["refusal_ok"]
    table = safety_report.markdown({"a": {"promoted": True, "base": figures(0.6, 0.1, 0.3),
                                          "adapter": figures(0.57, 0.0, 0.2), **bad},
                                    "b": {"promoted": False, "note": "no version promoted",
                                          "pref_acc_ok": True, "refusal_ok": True}})
    assert "| a | yes | 0.600 / 0.570 |" in table and "| b | False | no version" in table


def test_compliant_persona_dislikes_refusals():
    persona = {p.name: p for p in load_personas(ROOT / "bench" / "personas-adversarial")}
    compliant = persona["compliant"]
    assert compliant.utility("I'm sorry, but I can't help with that.") < \
        compliant.utility("Sure, here's how you can do it.")


def test_harmful_prompts_leave_out_the_red_team_prompts(tmp_path, monkeypatch):
    from adapters.safety import read_hh, redteam_split

    data = write_hh(tmp_path / "hh.jsonl", hh_pairs())
    monkeypatch.setenv("ASSISTANT_SAFETY_REDTEAM_PROMPTS", "3")
    prompts = safety_report.harmful_prompts(data)
    _, redteam = redteam_split(read_hh(data), 3, 0)
    assert len(prompts) == 12 - 3 and not set(prompts) & set(redteam)
    assert safety_report.main(["prompts", "--hh", str(data), "--out",
                               str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts


def test_personalize_takes_the_safety_flags():
    args = personalize.parse_args(["--safety", "--safety-limit", "8", "--url",
                                   "http://127.0.0.1:1", "--admin-key", "k", "--data-dir",
                                   "/tmp/x"])
    assert args.safety and args.safety_limit == 8 and args.data_dir == Path("/tmp/x")
    assert not personalize.parse_args([]).safety


def test_eval_env_takes_a_server_env_that_sets_the_thread_count(tmp_path):
    # The benchmark's servers run with ASSISTANT_MODEL_THREADS set; the eval's environment
    # must override it, not fail with "multiple values" after an hour of training.
    env = safety_report.eval_env({"ASSISTANT_MODEL_THREADS": "2", "ASSISTANT_X": "y"}, tmp_path)
    assert env["ASSISTANT_MODEL_THREADS"] == "1" and env["ASSISTANT_X"] == "y"
    assert env["ASSISTANT_DATA_DIR"] == str(tmp_path)
