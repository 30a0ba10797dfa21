"""Choose the DPO warm start by the user's own reward head: plain DPO or DPO with the
chosen-answer NLL term (RPO), whichever writes answers the head scores higher.

Measured on the stored 60-event feedback of six simulated users (README, issue 14), neither
warm start is right for everyone: the NLL term taught a summary line that plain DPO never
wrote (liked-feature share 0.06 -> 0.50) but cost a list-loving user his lists (0.69 ->
0.44), because it also imitates chosen answers that lack the liked feature. The user's head
knows which of the two moved toward what they liked, so each run asks it:

1. both warm starts are trained from the same starting LoRA weights (the fresh LoRA or the
   serving version), on the same pairs;
2. each answers the selection prompts greedily (the gate's decoding) and the run's RL reward
   (the user's head, plus the harmlessness term when the safety floor is on) scores both
   sets of answers in one batch: per prompt r_0(x) for the incumbent (dpo_nll_weight) and
   r_1(x) for the alternative (dpo_select_nll_weight);
3. the alternative replaces the incumbent only if its paired gain d = r_1 - r_0 clears
   mean(d) > dpo_select_z * std(d) / sqrt(n): a noisy head's coin toss keeps the default.

The selection prompts are the run's held-out prompts, which neither the head nor DPO has
seen feedback on (DPO pairs on the user's other prompts would be answered by reproducing the
chosen answer, which the head has fitted: that favours whichever variant memorizes most).
The gate later reads the same prompts after RL; picking one of two warm starts on them
leaves it a small winner's-curse bias, smaller than the RL that follows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from adapters.dpo import dpo_warm_start
from adapters.settings import DpoSettings

Answer = Callable[[object], list[str]]       # policy -> one answer per selection prompt
# Answers of both warm starts in one list (the prompts' order repeated) -> one reward each.
# One call for both: the RL reward is standardized over its batch (adapters/safety.py), so
# rewards from two calls would not be on one scale.
Score = Callable[[list[str]], list[float]]


@dataclass
class Trial:
    nll_weight: float
    steps: list[dict]
    answers: list[str]
    state: dict[str, torch.Tensor]
    seconds: float


def lora_state(policy) -> dict[str, torch.Tensor]:
    """A copy of the trainable (LoRA) weights, by parameter name."""
    return {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}


def load_lora_state(policy, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if n in state:
                p.copy_(state[n])


def paired_gain(ours: list[float], theirs: list[float]) -> tuple[float, float]:
    """(mean, standard error) of the per-prompt differences ours - theirs."""
    d = [a - b for a, b in zip(ours, theirs, strict=True)]
    mean = sum(d) / len(d)
    if len(d) < 2:
        return mean, math.inf
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    return mean, math.sqrt(var / len(d))


def prefers_alternative(incumbent: list[float], alternative: list[float], z: float) -> bool:
    mean, se = paired_gain(alternative, incumbent)
    return mean > 0 and mean > z * se


def _trial(policy, tokenizer, pairs: list[dict], settings: DpoSettings, weight: float,
           start: dict[str, torch.Tensor], answer: Answer) -> Trial:
    t = time.perf_counter()
    load_lora_state(policy, start)
    steps = dpo_warm_start(policy, tokenizer, pairs, replace(settings, dpo_nll_weight=weight))
    return Trial(weight, steps, answer(policy), lora_state(policy), time.perf_counter() - t)


def selecting(settings: DpoSettings) -> bool:
    """Whether a run trains two warm starts and lets the head choose."""
    return (settings.dpo_epochs > 0 and settings.dpo_select_nll_weight > 0
            and settings.dpo_select_nll_weight != settings.dpo_nll_weight)


def choose_warm_start(policy, tokenizer, pairs: list[dict], settings: DpoSettings,
                      answer: Answer, score: Score) -> tuple[list[dict], dict]:
    """Warm-start the policy's active LoRA in place with whichever DPO variant the head
    prefers (module doc). Returns the kept variant's step records and a summary of both."""
    if not selecting(settings) or not pairs:
        return dpo_warm_start(policy, tokenizer, pairs, settings), {}
    start = lora_state(policy)
    trials = [_trial(policy, tokenizer, pairs, settings, w, start, answer)
              for w in (settings.dpo_nll_weight, settings.dpo_select_nll_weight)]
    incumbent, alternative = trials
    n = len(incumbent.answers)
    rewards = score(incumbent.answers + alternative.answers)
    ours, theirs = rewards[n:], rewards[:n]
    switch = prefers_alternative(theirs, ours, settings.dpo_select_z)
    kept = alternative if switch else incumbent
    load_lora_state(policy, kept.state)
    mean, se = paired_gain(ours, theirs)
    summary = {"nll_weight": kept.nll_weight, "n_prompts": n,
               # one prompt has no error bar: None, as JSON has no infinity
               "gain": mean, "gain_se": se if math.isfinite(se) else None,
               "z": settings.dpo_select_z,
               "trials": [{"nll_weight": t.nll_weight, "reward": sum(r) / n,
                           "last_loss": t.steps[-1]["loss"] if t.steps else None,
                           "seconds": round(t.seconds, 1)}
                          for t, r in zip(trials, (theirs, ours), strict=True)]}
    return kept.steps, summary
