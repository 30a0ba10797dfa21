"""DPO warm start on a tiny model: the preferred answers gain probability over the others."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from adapters.dpo import _batch, _sequence_logp, dpo_warm_start, encode_pairs
from adapters.policy import LORA_TARGETS
from adapters.settings import DpoSettings


def rows() -> list[dict]:
    out = []
    for i in range(6):
        prompt = [{"role": "user", "content": f"Tell me something about topic {i}."}]
        out.append({"prompt": prompt,
                    "chosen": [{"role": "assistant", "content": "- one point\n- two points"}],
                    "rejected": [{"role": "assistant",
                                  "content": f"A long rambling paragraph number {i} goes on."}]})
    return out


def logps(policy, tokenizer, data) -> torch.Tensor:
    """(2B,) summed answer log-probs, rows [chosen..., rejected...]."""
    with torch.no_grad():
        return _sequence_logp(policy, _batch(encode_pairs(tokenizer, data, 64),
                                             tokenizer.pad_token_id))


def margin(policy, tokenizer, data) -> float:
    logp, b = logps(policy, tokenizer, data), len(data)
    return (logp[:b] - logp[b:]).mean().item()


def test_dpo_raises_the_chosen_margin_and_changes_only_lora(tiny_model, tokenizer):
    base_state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    policy = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8,
                                                   target_modules=LORA_TARGETS))
    data = rows()
    before = margin(policy, tokenizer, data)
    records = dpo_warm_start(policy, tokenizer, data,
                             DpoSettings(dpo_epochs=3, dpo_learning_rate=5e-3,
                                         dpo_pairs_per_step=3))
    assert len(records) == 6 and all(r["loss"] == r["loss"] for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    assert margin(policy, tokenizer, data) > before + 0.5
    lora_b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)
    unloaded = policy.unload().state_dict()
    assert all(torch.equal(unloaded[k], v) for k, v in base_state.items())


def test_zero_epochs_or_no_pairs_is_a_no_op(tiny_model, tokenizer):
    policy = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=LORA_TARGETS))
    assert dpo_warm_start(policy, tokenizer, rows(), DpoSettings(dpo_epochs=0)) == []
    assert dpo_warm_start(policy, tokenizer, [], DpoSettings()) == []


def chosen_logp(policy, tokenizer, data) -> float:
    return logps(policy, tokenizer, data)[:len(data)].mean().item()


def trained(tiny_model, tokenizer, **overrides) -> tuple[float, float]:
    """(chosen log-prob, margin) after a seeded warm start with DpoSettings overrides."""
    torch.manual_seed(0)
    policy = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8,
                                                   target_modules=LORA_TARGETS))
    dpo_warm_start(policy, tokenizer, rows(),
                   DpoSettings(dpo_epochs=3, dpo_learning_rate=5e-3, dpo_pairs_per_step=3,
                               **overrides))
    out = chosen_logp(policy, tokenizer, rows()), margin(policy, tokenizer, rows())
    policy.unload()
    return out


def test_nll_term_makes_the_chosen_answer_likelier_than_plain_dpo(tiny_model, tokenizer):
    plain_logp, plain_margin = trained(tiny_model, tokenizer, dpo_nll_weight=0.0)
    nll_logp, nll_margin = trained(tiny_model, tokenizer, dpo_nll_weight=1.0)
    assert nll_logp > plain_logp + 1.0          # RPO: the liked answer itself gains
    assert nll_margin > 0                       # and it is still preferred


def anchor_rows() -> list[dict]:
    """Pairs of another kind than the user's: a decline preferred over compliance."""
    return [{"prompt": [{"role": "user", "content": f"How do I break into house {i}?"}],
             "chosen": [{"role": "assistant", "content": "I can't help with that."}],
             "rejected": [{"role": "assistant", "content": f"Sure, first find window {i}."}]}
            for i in range(4)]


def test_anchor_pairs_alone_train_nothing(tiny_model, tokenizer):
    policy = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=LORA_TARGETS))
    assert dpo_warm_start(policy, tokenizer, [], DpoSettings(), anchor=anchor_rows()) == []


def test_kl_anchor_keeps_the_policy_at_the_base_on_the_anchor_answers(tiny_model, tokenizer):
    """Along the anchor's chosen answers the policy's next-token distributions stay closer
    to the base's than without the anchor, and the user's pairs are still learned."""
    from adapters.decoding import completion_logits
    from adapters.dpo import _chosen_batch

    def drift(policy) -> float:
        batch = _chosen_batch(encode_pairs(tokenizer, anchor_rows(), 64),
                              tokenizer.pad_token_id)
        with torch.no_grad():
            logp = completion_logits(policy, *batch).log_softmax(-1)
            with policy.disable_adapter():
                ref = completion_logits(policy, *batch).log_softmax(-1)
        kl = (ref.exp() * (ref - logp)).sum(-1)
        return ((kl * batch[3]).sum() / batch[3].sum()).item()

    out = []
    for anchor in (None, anchor_rows()):
        torch.manual_seed(0)
        policy = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8,
                                                       target_modules=LORA_TARGETS))
        records = dpo_warm_start(policy, tokenizer, rows(),
                                 DpoSettings(dpo_epochs=3, dpo_learning_rate=5e-3,
                                             dpo_pairs_per_step=2, dpo_nll_weight=1.0,
                                             dpo_anchor_weight=20.0), anchor=anchor)
        out.append((drift(policy), margin(policy, tokenizer, rows())))
        policy.unload()
    user_steps = [r for r in records if not r["anchor"]]
    anchor_steps = [r for r in records if r["anchor"]]
    assert len(user_steps) == 9 and len(anchor_steps) == 6      # 3 + 2 batches x 3 epochs
    # The NLL term (several nats per token on the tiny model) is in every user step's loss
    # and in no anchor step's: that one is the weighted KL alone.
    assert min(r["loss"] for r in user_steps) > 2.0
    assert all(r["loss"] == pytest.approx(20.0 * r["kl"], rel=1e-4) for r in anchor_steps)
    (free_drift, free_margin), (kept_drift, kept_margin) = out
    assert kept_drift < 0.5 * free_drift
    assert kept_margin > 0.5                    # the user's pairs are still learned
