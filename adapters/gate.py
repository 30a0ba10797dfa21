"""The evaluation gate: is a freshly trained adapter better than the one serving now?

On held-out prompts the candidate adapter and the baseline (the user's current version, or
the bare base when they have none) each answer every prompt by greedy decoding, so the
comparison is reproducible and free of sampling noise. Measured:

- mean reward-head score of each side, and their difference (the gain);
- win rate: share of prompts where the candidate's answer scores higher (ties count half),
  against the baseline and, for the user's page, against the bare base;
- KL to the base, nats per token, on the candidate's own completions. It is computed exactly
  over the vocabulary at each position, sum_v pi(v|s) log(pi(v|s) / base(v|s)), instead of
  a one-sample estimate, since greedy completions are not samples from pi;
- mean completion length in tokens (reward heads often drift toward length).

`decide` promotes only if gain > promote_margin and KL <= kl_budget: a candidate no better
than the serving version (for example one whose run changed nothing, after the KL leash
undid its warm start and stopped RL at once) does not become a new version.

`evaluate` takes a PeftModel holding both adapters (see `load_adapter`) and decodes each
side with a bfloat16 copy that has that adapter merged in (the fast path on this CPU; greedy
decoding of a bf16 copy is as deterministic as fp32's).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from adapters.decoding import (
    BASE,
    RewardFn,
    bf16_twin,
    completion_mask,
    decode,
    eos_ids,
    left_pad,
    render_prompts,
    sample,
    score_texts,
)
from adapters.records import GateMetrics
from adapters.settings import GateSettings
from feedback_store.errors import ModelError, TrainingError

GATE_BATCH = 16         # rows per generate / KL forward: bounds the (rows, T, 49k) logits


def load_adapter(model, path: Path, name: str) -> str:
    """Load a saved adapter (e.g. the current version) next to the candidate; return name."""
    try:
        model.load_adapter(str(path), adapter_name=name)
    except Exception as exc:
        raise ModelError(f"could not load adapter {name} from {path}: {exc}") from exc
    return name


def _twin(model, name: str):
    """A bfloat16 copy of the PeftModel with adapter `name` merged in (BASE: no adapter).

    Merged weights decode as fast as the plain base; PEFT's per-row routing would pay two
    extra small matmuls per projection per token, in float32.
    """
    twin = bf16_twin(model)
    return twin.unload() if name == BASE else twin.merge_and_unload(adapter_names=[name])


def _answers(gen_model, base_model, lm_head, tokenizer, rows: list[list[int]],
             max_tokens: int) -> list[dict]:
    """Greedy completions by gen_model and their KL to base_model, GATE_BATCH rows a time."""
    eos = eos_ids(gen_model, tokenizer)
    out = []
    for i in range(0, len(rows), GATE_BATCH):
        ids, mask = left_pad(rows[i:i + GATE_BATCH], tokenizer.pad_token_id)
        tokens = sample(gen_model, ids, mask, max_new_tokens=max_tokens, temperature=0.0,
                        eos=eos, pad_id=tokenizer.pad_token_id)
        cmask = completion_mask(tokens, eos)
        kl = (torch.zeros(len(tokens)) if gen_model is base_model
              else _kl_sum(gen_model, base_model, lm_head, ids, mask, tokens, cmask))
        for j, text in enumerate(decode(tokenizer, tokens, cmask)):
            out.append({"text": text, "len": cmask[j].sum().item(), "kl_sum": kl[j].item()})
    return out


@torch.no_grad()
def _kl_sum(model, base_model, lm_head, ids: torch.Tensor, mask: torch.Tensor,
            tokens: torch.Tensor, cmask: torch.Tensor) -> torch.Tensor:
    """(B,) summed exact per-position KL(model || base) over each completion's tokens.

    Decoders run in bf16, the output layer `lm_head` in float32 at completion positions
    only.
    """
    full = torch.cat([ids, tokens], dim=1)                                  # (B, P+T)
    attn = torch.cat([mask, cmask.long()], dim=1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    t = tokens.shape[1]

    def logprobs(m) -> torch.Tensor:                                         # (B, T, V)
        hidden = m.get_decoder()(input_ids=full, attention_mask=attn, position_ids=pos,
                                 use_cache=False).last_hidden_state
        return lm_head(hidden[:, -t - 1:-1].float().contiguous()).log_softmax(-1)

    lp, lq = logprobs(model), logprobs(base_model)
    per_pos = (lp.exp() * (lp - lq)).sum(-1)                                # (B, T)
    return (per_pos * cmask).sum(-1)


def _side(answers: list[dict], rewards: list[float]) -> dict:
    tokens = sum(a["len"] for a in answers)
    return {"reward": sum(rewards) / len(rewards),
            "kl": sum(a["kl_sum"] for a in answers) / max(tokens, 1),
            "len": tokens / len(answers)}



def _win_rate(ours: list[float], theirs: list[float]) -> float:
    """Share of prompts where `ours` scores higher; ties count half."""
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0
               for a, b in zip(ours, theirs, strict=True))
    return wins / len(ours)


def evaluate(model, tokenizer, candidate: str, current: str | None,
             prompts: list[list[dict]], reward_fn: RewardFn,
             settings: GateSettings) -> GateMetrics:
    """Compare adapter `candidate` with adapter `current` (None = the base) on prompts.

    model is a PeftModel holding both adapters. win_rate_vs_base is the same figure as
    win_rate when the base is the baseline. Promotion (`decide`) reads only the comparison
    with the baseline.
    """
    if not prompts:
        raise TrainingError("the gate needs at least one held-out prompt")
    started = time.perf_counter()
    n, baseline = len(prompts), current or BASE
    rows = render_prompts(tokenizer, prompts)
    twins = {name: _twin(model, name) for name in {candidate, baseline, BASE}}
    lm_head = model.get_base_model().get_output_embeddings()    # float32, shared
    # The bare base answers too when it is not the baseline already, so "My assistant" can
    # show every version against the same yardstick; when it is, that is no extra work.
    sides = (candidate, baseline) if baseline == BASE else (candidate, baseline, BASE)
    answers = [a for name in sides
               for a in _answers(twins[name], twins[BASE], lm_head, tokenizer, rows,
                                 settings.max_completion_tokens)]
    def score(part: list[dict]) -> list[float]:
        return score_texts(reward_fn, prompts, [a["text"] for a in part], "the gate")

    r_cand, r_base = score(answers[:n]), score(answers[n:2 * n])
    r_bare = r_base if baseline == BASE else score(answers[2 * n:])
    cand, base = _side(answers[:n], r_cand), _side(answers[n:2 * n], r_base)
    return {"n_prompts": n, "baseline": "current" if current else "base",
            "candidate_reward": cand["reward"], "baseline_reward": base["reward"],
            "reward_gain": cand["reward"] - base["reward"],
            "win_rate": _win_rate(r_cand, r_base),
            "win_rate_vs_base": _win_rate(r_cand, r_bare),
            "candidate_kl": cand["kl"], "baseline_kl": base["kl"],
            "candidate_len": cand["len"], "baseline_len": base["len"],
            "seconds": time.perf_counter() - started}


def decide(metrics: GateMetrics, settings: GateSettings) -> tuple[bool, str]:
    """Promote only if the reward gain exceeds the margin and the KL stays in budget."""
    gain, kl = metrics["reward_gain"], metrics["candidate_kl"]
    if not (math.isfinite(gain) and math.isfinite(kl)):
        return False, f"rejected: non-finite metrics (gain {gain}, KL {kl})"
    if kl > settings.kl_budget:
        return False, (f"rejected: KL to base {kl:.3f} nats/token exceeds the budget "
                       f"{settings.kl_budget}")
    if gain <= settings.promote_margin:
        return False, (f"rejected: reward gain {gain:+.4f} over the {metrics['baseline']} does "
                       f"not exceed the margin {settings.promote_margin}")
    return True, (f"promoted: reward gain {gain:+.4f} > margin {settings.promote_margin}, "
                  f"win rate {metrics['win_rate']:.2f}, KL {kl:.3f} <= {settings.kl_budget}")


def greedy_texts(model, tokenizer, name: str, prompts: list[list[dict]],
                 max_tokens: int) -> list[str]:
    """Greedy answers of adapter `name` (BASE: none) of a PeftModel, GATE_BATCH rows a time
    (the safety floor's red-team answers; no KL needed)."""
    twin = _twin(model, name)
    rows, eos = render_prompts(tokenizer, prompts), eos_ids(model, tokenizer)
    texts = []
    for i in range(0, len(rows), GATE_BATCH):
        ids, mask = left_pad(rows[i:i + GATE_BATCH], tokenizer.pad_token_id)
        tokens = sample(twin, ids, mask, max_new_tokens=max_tokens, temperature=0.0, eos=eos,
                        pad_id=tokenizer.pad_token_id)
        texts += decode(tokenizer, tokens, completion_mask(tokens, eos))
    return texts
