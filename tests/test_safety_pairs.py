"""On-policy safety pairs (adapters/safety_pairs.py) on a tiny model: pairs only where the
candidate's answer scores below the base's, base answers cached beside the head, and the
round's DPO steps make the base's answers likelier than the candidate's."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from adapters import safety, safety_pairs
from adapters.dpo import _batch, _sequence_logp, encode_pairs
from adapters.gate import greedy_texts
from adapters.policy import LORA_TARGETS
from adapters.settings import DpoSettings
from tests.test_safety import hh_pairs, settings_for, write_hh


@pytest.fixture
def setup(tmp_path, tokenizer, tiny_model):
    data = write_hh(tmp_path / "hh.jsonl", hh_pairs(16))
    settings = settings_for(tmp_path, data, onpolicy_prompts=6, max_tokens=8)
    consensus = safety.ensure_consensus(tiny_model, tokenizer, "tiny@1", settings,
                                        log=lambda _: None)
    policy = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8,
                                                   target_modules=LORA_TARGETS))
    return policy, consensus, settings


def perturb(policy, scale: float = 0.5) -> None:
    """Move the LoRA off zero so the candidate's answers differ from the base's."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale)


def harsher(consensus: safety.Consensus) -> safety.Consensus:
    """The same head negated: on the random tiny model the base answers blank lines, which the
    fitted head scores below the perturbed candidate's words; negated, every answer of the
    candidate falls below the base's, so the selection has something to select."""
    consensus.head.w, consensus.head.b = -consensus.head.w, -consensus.head.b
    return consensus


def test_an_unchanged_candidate_gives_no_pairs(setup, tokenizer):
    policy, consensus, settings = setup
    rows, info = safety_pairs.onpolicy_pairs(policy, tokenizer, consensus, settings)
    assert rows == [] and info["prompts"] == 6 and info["mean_gap"] == 0.0


def test_pairs_are_the_requests_where_the_candidate_fell_below_the_base(setup, tokenizer):
    policy, consensus, settings = setup
    perturb(policy)
    consensus = harsher(consensus)
    prompts = safety.practice_prompts(settings, 6)
    messages = safety.single_turns(prompts)
    answers = greedy_texts(policy, tokenizer, "default", messages, 8)
    base_texts = safety_pairs.base_side(policy, tokenizer, consensus, prompts, 8)["texts"]
    gap = (consensus.score_texts(policy, tokenizer, messages, base_texts)
           - consensus.score_texts(policy, tokenizer, messages, answers))
    assert (gap > 0).all()
    # a margin between the gaps: the requests the candidate fell furthest below the base on
    settings = replace(settings, onpolicy_margin=float(np.median(gap)))
    rows, info = safety_pairs.onpolicy_pairs(policy, tokenizer, consensus, settings)
    cached = json.loads((consensus.folder / "base-practice-6-8.json").read_text())
    assert cached["prompts"] == prompts and cached["texts"] == base_texts
    assert np.allclose(cached["scores"], consensus.score_texts(policy, tokenizer, messages,
                                                               base_texts))
    mine = {r["prompt"][0]["content"]: r["rejected"][0]["content"] for r in rows}
    base = dict(zip(prompts, cached["texts"], strict=True))
    # chosen = the base's answer, rejected = the candidate's own, from the practice prompts
    for r in rows:
        assert r["chosen"][0]["content"] == base[r["prompt"][0]["content"]]
    # exactly the requests whose candidate answer the head scores below the base's by more
    # than the margin
    expected = {p for p, g in zip(prompts, gap, strict=True) if g > settings.onpolicy_margin}
    assert 0 < len(expected) < 6
    assert set(mine) == expected and info["pairs"] == len(expected)
    assert np.isclose(info["mean_gap"], round(float(gap.mean()), 4))
    assert all(mine[p] == a for p, a in zip(prompts, answers, strict=True) if p in mine)
    # a margin no gap reaches: no pairs
    strict = replace(settings, onpolicy_margin=1e9)
    assert safety_pairs.onpolicy_pairs(policy, tokenizer, consensus, strict)[0] == []


def test_the_base_side_is_computed_once(setup, tokenizer, monkeypatch):
    policy, consensus, settings = setup
    prompts = safety.practice_prompts(settings, 6)
    first = safety_pairs.base_side(policy, tokenizer, consensus, prompts, 8)
    assert len(first["texts"]) == len(first["scores"]) == 6

    def no_work(*_a, **_k):
        raise AssertionError("the base's practice answers and scores are kept beside the head")
    monkeypatch.setattr(safety_pairs, "greedy_texts", no_work)
    monkeypatch.setattr(consensus, "score_texts", no_work)
    assert safety_pairs.base_side(policy, tokenizer, consensus, prompts, 8) == first


def test_the_round_fits_its_pairs_toward_the_base_answers(setup, tokenizer):
    policy, consensus, settings = setup
    perturb(policy)
    consensus = harsher(consensus)
    rows, _ = safety_pairs.onpolicy_pairs(policy, tokenizer, consensus, settings)
    assert len(rows) == 6

    def margin() -> float:
        with torch.no_grad():
            logp = _sequence_logp(policy, _batch(encode_pairs(tokenizer, rows, 64),
                                                 tokenizer.pad_token_id))
        return (logp[:len(rows)] - logp[len(rows):]).mean().item()

    before = margin()
    # the warm start's settings, but the round's own number of epochs
    dpo = DpoSettings(dpo_epochs=5, dpo_learning_rate=5e-3, dpo_pairs_per_step=2)
    logged: list[str] = []
    steps, info = safety_pairs.safety_round(policy, tokenizer, consensus,
                                            replace(settings, onpolicy_epochs=2), dpo,
                                            logged.append, replay=user_rows())
    assert len(steps) == 2 * 3 and all(s["safety"] for s in steps)   # replay off: 6 pairs
    assert margin() > before                       # the base's answers, likelier than mine
    assert info["pairs"] == len(rows) and f"on {len(rows)} of 6 practice" in logged[0]
    assert "of the user's" not in logged[0]


def user_rows() -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"Tell me about topic {i}."}],
             "chosen": [{"role": "assistant", "content": "For example, a cat."}],
             "rejected": [{"role": "assistant", "content": "Topics are many."}]}
            for i in range(4)]


def test_replay_fits_the_users_pairs_among_the_safety_pairs(setup, tokenizer):
    policy, consensus, settings = setup
    perturb(policy)
    consensus = harsher(consensus)
    dpo = DpoSettings(dpo_learning_rate=5e-3, dpo_pairs_per_step=2)
    logged: list[str] = []
    steps, _ = safety_pairs.safety_round(policy, tokenizer, consensus,
                                         replace(settings, onpolicy_replay=True), dpo,
                                         logged.append, replay=user_rows())
    assert len(steps) == (6 + 4) // 2                  # one epoch over both sets
    assert "and 4 of the user's" in logged[0]
