"""The safety floor: refusal detector, red-team split, consensus head, RL reward, gate check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adapters import safety
from adapters.safety import SafetySettings, floor_check, is_refusal, redteam_split, rl_reward
from feedback_store.errors import ConfigError, NotFound

HH = Path("/work/shared/data/hh-harmless-dev.jsonl")


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.", "I can’t help you with that.",
    "Sorry, I cannot do that", "I won't provide instructions for this.",
    "I am not able to assist with hacking.", "I'm not comfortable with this request.",
    "As an AI, I must decline.", "That is something I'm not able to help with.",
    "I'm unable to provide that information.", "I’m not able to assist with this.",
    "I'm sorry for any confusion, but I'm unable to help you find his address.",
])
def test_refusals_are_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "I'm sorry, I'm not sure what you're asking.", "Sure! Here is how to bake bread.",
    "You can't go wrong with a good book.", "I can help you with that.", "",
])
def test_apologies_and_answers_are_not_refusals(text):
    assert not is_refusal(text)


def hh_pairs(n_single: int = 12, n_multi: int = 4) -> list[safety.HHPair]:
    pairs = []
    for i in range(n_single):
        harmful = i % 2 == 0
        pairs.append(safety.HHPair(
            [{"role": "user", "content": f"request {i} " + "x" * i}],
            "I'm sorry, but I can't help with that." if harmful else f"Sure, answer {i}.",
            f"Here is how to do {i}." if harmful else f"No idea {i}."))
    for i in range(n_multi):
        pairs.append(safety.HHPair(
            [{"role": "user", "content": f"multi {i}"}, {"role": "assistant", "content": "ok"},
             {"role": "user", "content": "and then?"}], f"Fine {i}.", f"Bad {i}."))
    return pairs


def test_redteam_prompts_are_single_turn_clearly_harmful_first_and_left_out_of_the_fit():
    pairs = hh_pairs()
    pairs.append(safety.HHPair([{"role": "user", "content": "request 0 "}], "I can't help.",
                               "Do it like this."))   # a second pair of a red-team prompt
    fit, redteam = redteam_split(pairs, 4, seed=0)
    assert len(redteam) == 4 and len(set(redteam)) == 4
    harmful = {p.first_turn for p in pairs[:12:2]}
    assert set(redteam) <= harmful                  # six clearly harmful ones to pick from
    assert all(pairs[i].first_turn not in redteam for i in fit)
    assert len(fit) == len(pairs) - sum(p.first_turn in redteam for p in pairs)
    assert redteam_split(pairs, 4, seed=0) == (fit, redteam)
    assert redteam_split(pairs, 4, seed=1)[1] != redteam


def test_fit_pairs_keeps_the_shortest_conversations():
    pairs = hh_pairs()
    fit, redteam = redteam_split(pairs, 2, seed=0, fit_pairs=5)
    assert len(fit) == 5 and not {pairs[i].first_turn for i in fit} & set(redteam)
    rest = [i for i in range(len(pairs)) if pairs[i].first_turn not in redteam and i not in fit]
    longest_kept = max(safety._chars(pairs[i]) for i in fit)
    assert all(safety._chars(pairs[i]) >= longest_kept for i in rest)


def test_rl_reward_with_weight_zero_keeps_the_users_ranking_and_safety_can_reorder():
    user, harmless = [3.0, 1.0, 2.0, 0.0], [-5.0, 5.0, 0.0, 0.0]
    assert np.argsort(rl_reward(user, harmless, 0.0)).tolist() == np.argsort(user).tolist()
    combined = rl_reward(user, harmless, 2.0)
    assert combined[1] > combined[0]              # the harmless answer now wins
    assert np.allclose(rl_reward([1.0, 1.0], [2.0, 2.0], 0.5), [0.0, 0.0])  # no NaN


def side(score: float, refusal: float) -> dict:
    return {"harmless_score": score, "refusal_rate": refusal}


def test_floor_check_rejects_with_the_reason_in_words():
    s = SafetySettings(margin=0.25, refusal_tolerance=0.0)
    ok, reason = floor_check(side(-0.1, 0.3), side(0.0, 0.3), s)
    assert ok and "passed" in reason
    ok, reason = floor_check(side(-0.5, 0.3), side(0.0, 0.3), s)
    assert not ok and "harmlessness" in reason and "below the base" in reason
    ok, reason = floor_check(side(0.1, 0.25), side(0.0, 0.3), s)
    assert not ok and "refuses 25%" in reason and "the base 30%" in reason
    assert floor_check(side(0.1, 0.25), side(0.0, 0.3),
                       SafetySettings(refusal_tolerance=0.05))[0]


def test_reward_features_ignore_lora_injected_into_the_plain_base(tokenizer, tiny_model):
    """get_peft_model injects LoRA into the caller's model; the job scores RL samples with
    `base.model`, which must still give the frozen base's features."""
    from peft import LoraConfig, get_peft_model

    from adapters.features import compute_features

    items = [([{"role": "user", "content": "hi"}], "hello there")]
    before = compute_features(tiny_model, tokenizer, items)
    policy = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"],
                                                   init_lora_weights=False))
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert np.allclose(compute_features(tiny_model, tokenizer, items), before, atol=1e-6)
    assert [n for n, p in policy.named_parameters() if p.requires_grad] == trainable
    with policy.disable_adapter():
        pass
    out = policy(input_ids=__import__("torch").tensor([[1, 2, 3]])).logits
    with policy.disable_adapter():
        base_out = policy(input_ids=__import__("torch").tensor([[1, 2, 3]])).logits
    assert not np.allclose(out.detach().numpy(), base_out.numpy())   # the LoRA is back on


def write_hh(path: Path, pairs: list[safety.HHPair]) -> Path:
    path.write_text("".join(json.dumps({"user": "hh", "prompt": p.prompt, "chosen": p.chosen,
                                        "rejected": p.rejected}) + "\n" for p in pairs))
    return path


def settings_for(tmp_path: Path, data: Path, **kw) -> SafetySettings:
    return SafetySettings(data_file=str(data), store_dir=str(tmp_path / "safety"),
                          features_dir=str(tmp_path / "features"), redteam_prompts=3, **kw)


def test_consensus_head_is_fitted_once_then_loaded_and_keyed_by_its_data(tmp_path, tokenizer,
                                                                         tiny_model):
    data = write_hh(tmp_path / "hh.jsonl", hh_pairs())
    s = settings_for(tmp_path, data)
    head = safety.ensure_consensus(tiny_model, tokenizer, "tiny@1", s, log=lambda _: None)
    assert len(head.redteam) == 3 and head.meta["n_fit_pairs"] == 16 - 3
    assert head.scale > 0 and head.folder.parent == tmp_path / "safety"

    def no_model():
        raise AssertionError("a stored head must not need the model")
    again = safety.ensure_consensus(no_model, tokenizer, "tiny@1", s, log=lambda _: None)
    assert again.key == head.key and np.allclose(again.head.w, head.head.w)
    assert again.redteam == head.redteam
    # Another base or another data file is another head, never the stored one.
    assert safety.consensus_key("tiny@2", s, "x") != safety.consensus_key("tiny@1", s, "x")
    write_hh(data, hh_pairs(14))
    with pytest.raises(NotFound):
        safety.load_consensus("tiny@1", s)
    scores = head.score_texts(tiny_model, tokenizer, head.redteam_messages(),
                              ["I can't help with that."] * 3)
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_safety_config_defaults_resolve_next_to_the_config_file(tmp_path):
    from assistant.config import load_config
    from assistant.training_settings import safety_settings

    (tmp_path / "repo").mkdir()
    cfg = tmp_path / "repo" / "config.toml"
    cfg.write_text("")
    config = load_config(cfg, env={})
    assert config.safety.enabled and config.safety.weight == 0.5
    assert config.safety_data_file == tmp_path / "shared" / "data" / "hh-harmless-dev.jsonl"
    assert config.safety_dir == tmp_path / "repo" / "data" / "safety"
    with pytest.raises(ConfigError, match="safety.data_file"):
        safety_settings(config)              # on, but the file is missing: a clear error
    write_hh(tmp_path / "hh.jsonl", hh_pairs())
    config = load_config(cfg, env={"ASSISTANT_SAFETY_DATA_FILE": str(tmp_path / "hh.jsonl"),
                                   "ASSISTANT_SAFETY_WEIGHT": "0.25"})
    s = safety_settings(config)
    assert s.enabled and s.weight == 0.25 and s.data_file == str(tmp_path / "hh.jsonl")
    assert s.features_dir == str(config.cache_dir / "features")
    off = load_config(cfg, env={"ASSISTANT_SAFETY_ENABLED": "false"})
    assert not safety_settings(off).enabled
    for var, value in [("WEIGHT", "-1"), ("MARGIN", "-0.1"), ("REDTEAM_PROMPTS", "0"),
                       ("REFUSAL_TOLERANCE", "2"), ("ONPOLICY_PROMPTS", "-1"),
                       ("ONPOLICY_EPOCHS", "0"), ("ONPOLICY_MARGIN", "-0.5")]:
        with pytest.raises(ConfigError, match=f"safety.{var.lower()}"):
            load_config(cfg, env={f"ASSISTANT_SAFETY_{var}": value})


def test_repo_config_points_at_the_shared_hh_file():
    from assistant.config import DEFAULT_CONFIG, load_config

    config = load_config(DEFAULT_CONFIG, env={})
    assert config.safety.enabled
    assert config.safety_data_file == DEFAULT_CONFIG.parent.parent / "shared" / "data" / \
        "hh-harmless-dev.jsonl"


def test_dpo_anchor_rows_are_a_seeded_sample_of_the_fit_pairs(tmp_path):
    pairs = hh_pairs()
    settings = SafetySettings(data_file=str(write_hh(tmp_path / "hh.jsonl", pairs)),
                              redteam_prompts=3, fit_pairs=0, seed=0)
    fit, redteam = redteam_split(pairs, 3, seed=0)
    rows = safety.dpo_anchor_rows(settings, 5)
    assert len(rows) == 5 and rows == safety.dpo_anchor_rows(settings, 5)
    fitted = {(json.dumps(pairs[i].prompt), pairs[i].chosen, pairs[i].rejected) for i in fit}
    for r in rows:                  # TRL's preference format, from the fit set only
        assert (json.dumps(r["prompt"]), r["chosen"][0]["content"],
                r["rejected"][0]["content"]) in fitted
        assert r["chosen"][0]["role"] == "assistant"
        assert r["prompt"][0]["content"].strip() not in redteam
    assert len(safety.dpo_anchor_rows(settings, 10_000)) == len(fit)
    assert safety.dpo_anchor_rows(settings, 0) == []


def test_practice_prompts_follow_the_red_team_and_never_include_it(tmp_path):
    pairs = hh_pairs()
    settings = SafetySettings(data_file=str(write_hh(tmp_path / "hh.jsonl", pairs)),
                              redteam_prompts=3, seed=0)
    _, redteam = redteam_split(pairs, 3, seed=0)
    practice = safety.practice_prompts(settings, 5)
    assert len(practice) == 5 and not set(practice) & set(redteam)
    assert practice == safety.ordered_singles(pairs, 0)[3:8]     # seeded: the same each run
    singles = {p.first_turn for p in pairs if len(p.prompt) == 1}
    assert set(practice) <= singles                               # single-turn requests only
    # clearly harmful requests (chosen refuses, rejected complies) come first
    harmful = {p.first_turn for p in pairs[:12:2]}
    assert set(practice[:3]) <= harmful
    assert len(safety.practice_prompts(settings, 100)) == 12 - 3
    assert safety.practice_prompts(settings, 0) == []


def test_figures_kept_beside_the_head_survive_concurrent_writers(tmp_path):
    """Two gates (or a gate and a benchmark) may write the same cached figure at once. With
    one shared temporary name, a writer's rename took the other's file away
    (FileNotFoundError in ~1 of 3 writes of 4 threads)."""
    import threading

    path, errors = tmp_path / "base-redteam-64.json", []
    barrier = threading.Barrier(4)

    def write(i: int) -> None:
        barrier.wait()
        for k in range(100):
            try:
                safety.keep_beside_head(path, {"writer": i, "k": k, "pad": "x" * 2000})
            except OSError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(path.read_text())["k"] == 99           # whole, the last write of one
    assert list(tmp_path.iterdir()) == [path]                  # no temporary file left
