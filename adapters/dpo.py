"""DPO warm start: fit the LoRA to the user's own direct preference pairs before RL.

The RL stage only sees the user through their reward head, which with a few dozen pairs is a
weak, smoothed version of what they said. Their direct pairs (comparisons, rankings, an up
and a down on one turn) carry the signal first-hand, so a few epochs of Direct Preference
Optimization (Rafailov et al. 2023) move the policy toward their taste cheaply; GRPO then
continues on-policy from there against the head, with its KL leash to the base.

    loss = -log sigmoid(beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))])

with log pi(y) the sum of the answer's token log-probs under the LoRA policy and ref the
same model with its adapter disabled (the shared base), exactly as in RL.

plus, with dpo_nll_weight = w > 0, the chosen answer's per-token NLL (RPO, Pang et al. 2024):
    + w * mean over pairs of (-log pi(c) / |c|)

`anchor` pairs (the safety floor's HH harmless pairs, adapters/safety.py) are fitted in their
own batches, shuffled in among the user's, with a KL term instead: along each anchor's chosen
answer (teacher-forced) the policy's next-token distributions are kept at the base's,
    dpo_anchor_weight * mean over answer tokens of KL(ref || pi),
so the user's pairs move the adapter while the anchor holds it where the base was on the
kind of request a user's pairs never show (knowledge-distillation loss, Hinton et al. 2015,
used as a leash). Measured against DPO on the same pairs as preferences: README "DPO
variants", "A safety anchor".
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adapters.decoding import completion_logits, left_pad, render_prompts, token_logprobs
from adapters.settings import DpoSettings
from feedback_store.errors import TrainingError


@dataclass
class _Encoded:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def _answer_ids(tokenizer, text: str, eos: int, limit: int) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[:limit] if len(ids) >= limit else ids + [eos]


def encode_pairs(tokenizer, rows: list[dict], max_answer_tokens: int) -> list[_Encoded]:
    """TRL-format preference rows -> token ids (prompt rendered with the chat template)."""
    prompts = render_prompts(tokenizer, [r["prompt"] for r in rows])
    eos = tokenizer.eos_token_id
    return [_Encoded(p, _answer_ids(tokenizer, r["chosen"][0]["content"], eos, max_answer_tokens),
                     _answer_ids(tokenizer, r["rejected"][0]["content"], eos, max_answer_tokens))
            for p, r in zip(prompts, rows, strict=True)]


def _batch(pairs: list[_Encoded], pad: int) -> tuple[torch.Tensor, ...]:
    """Rows [chosen..., rejected...] as (2B, P) prompts and (2B, T) right-padded answers."""
    return _rows([p.prompt for p in pairs] * 2,
                 [p.chosen for p in pairs] + [p.rejected for p in pairs], pad)


def _chosen_batch(pairs: list[_Encoded], pad: int) -> tuple[torch.Tensor, ...]:
    """The chosen answers only: (B, P) prompts and (B, T) answers (the KL anchor's rows)."""
    return _rows([p.prompt for p in pairs], [p.chosen for p in pairs], pad)


def _rows(prompts: list[list[int]], answers: list[list[int]],
          pad: int) -> tuple[torch.Tensor, ...]:
    """Left-padded prompt ids and mask, right-padded answer ids and mask."""
    ids, mask = left_pad(prompts, pad)
    width = max(len(a) for a in answers)
    comp = torch.full((len(answers), width), pad, dtype=torch.long)
    cmask = torch.zeros((len(answers), width))
    for i, a in enumerate(answers):
        comp[i, :len(a)] = torch.tensor(a)
        cmask[i, :len(a)] = 1.0
    return ids, mask, comp, cmask


def _sequence_logp(policy, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(2B,) summed answer log-probs."""
    ids, mask, comp, cmask = batch
    return (token_logprobs(policy, ids, mask, comp, cmask) * cmask).sum(-1)


def dpo_loss(logp: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor, beta: float,
             nll_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, margin (B,)) from (2B,) policy and reference log-probs and answer token counts,
    rows [chosen..., rejected...]."""
    b = logp.shape[0] // 2
    margin = beta * ((logp[:b] - ref[:b]) - (logp[b:] - ref[b:]))       # (B,)
    loss = -F.logsigmoid(margin).mean()
    if nll_weight > 0:
        loss = loss + nll_weight * (-logp[:b] / lengths[:b]).mean()
    return loss, margin


def _chunks(pairs: list[_Encoded], size: int) -> list[list[_Encoded]]:
    return [pairs[i:i + size] for i in range(0, len(pairs), size)]


def dpo_warm_start(policy, tokenizer, rows: list[dict], settings: DpoSettings,
                   progress: Callable[[dict], None] | None = None,
                   anchor: list[dict] | None = None) -> list[dict]:
    """Train the policy's active LoRA on preference rows (and `anchor` rows, see the module
    doc) in place; one record per step. Nothing to do without rows of the user's own."""
    if settings.dpo_epochs <= 0 or not rows:
        return []
    size, pad = settings.dpo_pairs_per_step, tokenizer.pad_token_id
    limit = settings.dpo_max_answer_tokens
    own = [_batch(b, pad) for b in _chunks(encode_pairs(tokenizer, rows, limit), size)]
    anchors = [_chosen_batch(b, pad)
               for b in _chunks(encode_pairs(tokenizer, anchor or [], limit), size)]
    with torch.no_grad(), policy.disable_adapter():
        ref = [_sequence_logp(policy, b) for b in own]
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.dpo_learning_rate, weight_decay=0.0)
    order, records = list(range(len(own) + len(anchors))), []
    rng = random.Random(settings.dpo_seed)
    for epoch in range(settings.dpo_epochs):
        rng.shuffle(order)
        for i in order:
            records.append(_step(policy, optimizer, params, own[i], ref[i], settings, epoch)
                           if i < len(own) else
                           _kl_step(policy, optimizer, params, anchors[i - len(own)],
                                    settings, epoch))
            if progress:
                progress(records[-1])
    policy.eval()
    return records


def _update(optimizer, params, loss: torch.Tensor) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"non-finite DPO loss {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def _step(policy, optimizer, params, batch, ref: torch.Tensor, settings: DpoSettings,
          epoch: int) -> dict:
    started = time.perf_counter()
    policy.train()
    logp = _sequence_logp(policy, batch)
    loss, margin = dpo_loss(logp, ref, batch[3].sum(-1), settings.dpo_beta,
                            settings.dpo_nll_weight)
    _update(optimizer, params, loss)
    return {"epoch": epoch, "loss": loss.item(), "accuracy": (margin > 0).float().mean().item(),
            "margin": margin.mean().item(), "anchor": False,
            "seconds": time.perf_counter() - started}


def _kl_step(policy, optimizer, params, batch, settings: DpoSettings, epoch: int) -> dict:
    """One anchor step: KL(ref || pi) per token along the anchor pairs' chosen answers
    (`batch` from _chosen_batch: (B, P) prompts, (B, T) answers)."""
    started = time.perf_counter()
    cmask = batch[3]
    with torch.no_grad(), policy.disable_adapter():
        ref = completion_logits(policy, *batch).log_softmax(-1)     # (B, T, V)
    policy.train()
    logp = completion_logits(policy, *batch).log_softmax(-1)        # (B, T, V)
    kl = (ref.exp() * (ref - logp)).sum(-1)                         # (B, T)
    loss = settings.dpo_anchor_weight * (kl * cmask).sum() / cmask.sum()
    _update(optimizer, params, loss)
    return {"epoch": epoch, "loss": loss.item(), "kl": (loss / settings.dpo_anchor_weight).item(),
            "anchor": True, "seconds": time.perf_counter() - started}
