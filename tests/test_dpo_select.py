"""Choosing the DPO warm start by the head (adapters/dpo_select.py), on a tiny model."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from adapters.dpo import dpo_warm_start
from adapters.dpo_select import choose_warm_start, prefers_alternative, selecting
from adapters.policy import LORA_TARGETS
from adapters.settings import DpoSettings, SettingError
from tests.test_dpo import logps, rows

SETTINGS = DpoSettings(dpo_epochs=2, dpo_learning_rate=5e-3, dpo_pairs_per_step=3,
                       dpo_select_nll_weight=1.0)


def fresh_policy(model):
    torch.manual_seed(0)        # the same LoRA init each time (lora_dropout is 0)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))


def chosen_logps(policy, tokenizer) -> list[float]:
    """A stand-in head: per pair, how likely the policy writes the chosen answer."""
    data = rows()
    return logps(policy, tokenizer, data)[:len(data)].tolist()


def test_alternative_must_clear_the_noise():
    assert prefers_alternative([0.0, 0.0, 0.0, 0.0], [1.0, 1.1, 0.9, 1.0], z=1.0)
    # mean +0.25 with per-prompt gains of +-2: a coin toss keeps the incumbent
    assert not prefers_alternative([0.0] * 4, [2.0, -2.0, 2.5, -1.5], z=1.0)
    assert prefers_alternative([0.0] * 4, [2.0, -2.0, 2.5, -1.5], z=0.0)
    assert not prefers_alternative([1.0, 1.0], [0.0, 0.5], z=0.0)
    assert not prefers_alternative([0.0], [5.0], z=1.0)     # one prompt has no error bar


def test_selecting_needs_a_different_positive_weight_and_dpo_epochs():
    assert selecting(SETTINGS)
    assert not selecting(DpoSettings())
    assert not selecting(DpoSettings(dpo_nll_weight=1.0, dpo_select_nll_weight=1.0))
    assert not selecting(DpoSettings(dpo_epochs=0, dpo_select_nll_weight=1.0))
    with pytest.raises(SettingError):
        DpoSettings(dpo_select_nll_weight=-1.0)


@pytest.mark.parametrize("sign, kept", [(1.0, 1.0), (-1.0, 0.0)])
def test_the_head_picks_the_warm_start_and_the_policy_keeps_its_weights(tiny_model, tokenizer,
                                                                       sign, kept):
    """Both variants start from the same weights; the one the scorer prefers is what the
    policy holds afterwards. The NLL term raises the chosen answers' log-probs the most, so a
    scorer rewarding them keeps weight 1.0 and one penalizing them keeps plain DPO."""
    reference = {}
    for weight in (0.0, 1.0):
        policy = fresh_policy(tiny_model)
        dpo_warm_start(policy, tokenizer, rows(), DpoSettings(
            **{**SETTINGS.__dict__, "dpo_nll_weight": weight, "dpo_select_nll_weight": 0.0}))
        reference[weight] = chosen_logps(policy, tokenizer)
        tiny_model = policy.unload()
    policy = fresh_policy(tiny_model)
    calls = []

    def answer(p) -> list[str]:       # the "answers" are the log-probs, as text
        calls.append(chosen_logps(p, tokenizer))
        return [repr(v) for v in calls[-1]]

    def score(texts: list[str]) -> list[float]:
        """Centred over its batch, as the RL reward is standardized (adapters/safety.py):
        both warm starts must be scored in one call for their rewards to compare."""
        values = [sign * float(t) for t in texts]
        return [v - sum(values) / len(values) for v in values]

    steps, summary = choose_warm_start(policy, tokenizer, rows(), SETTINGS, answer, score)
    assert len(calls) == 2
    assert calls[0] == pytest.approx(reference[0.0], abs=1e-4)      # both from the same start
    assert calls[1] == pytest.approx(reference[1.0], abs=1e-4)
    assert summary["nll_weight"] == kept and len(summary["trials"]) == 2
    assert len(steps) == 4
    assert chosen_logps(policy, tokenizer) == pytest.approx(reference[kept], abs=1e-4)


def test_without_an_alternative_it_is_one_plain_warm_start(tiny_model, tokenizer):
    policy = fresh_policy(tiny_model)

    def unused(_):
        raise AssertionError("no selection, nothing to answer or score")

    steps, summary = choose_warm_start(policy, tokenizer, rows(), DpoSettings(), unused, unused)
    assert summary == {} and len(steps) == 4
