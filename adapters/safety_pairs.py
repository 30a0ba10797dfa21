"""On-policy safety pairs: after the DPO warm start, teach the candidate where its new style
must not go.

A user's pairs never show a harmful request, yet on a small base their lesson ("answer
directly", "give an example") carries over to harmful requests: a 60-event warm start
answers the red-team prompts in the user's style where the base hedged, and the safety
floor refuses it (README "DPO variants"). A KL anchor on HH's own answers held the adapter
back only by holding it at the base everywhere ("A safety anchor").

Here the pairs come from the candidate itself (online AI feedback, Guo et al. 2024: on-policy
pairs labelled by a fixed judge; the judge is the consensus harmlessness head):

1. the warm-started candidate and the base answer `onpolicy_prompts` single-turn HH requests
   greedily (red-team attempts that follow the gate's red team in the seeded order, so the
   gate's prompts stay unseen: safety.practice_prompts);
2. where the head scores the candidate's answer below the base's by more than
   `onpolicy_margin` (in standard deviations of its HH scores), (base answer, candidate
   answer) is a preference pair: chosen = what the base said, rejected = what the candidate
   now says;
3. those pairs are fitted by DPO (adapters/dpo.py, the warm start's settings) for
   `onpolicy_epochs`, with the user's own pairs shuffled in again when `onpolicy_replay`:
   the adapter is to learn "not this, here" on the requests where it drifted.

Off by default: on this 135M base it learned "not this" everywhere. On a 60-event user every
measured setting that passed the floor also lost the taste (README "On-policy safety pairs").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from adapters import safety
from adapters.decoding import BASE
from adapters.dpo import dpo_warm_start
from adapters.gate import greedy_texts
from adapters.settings import DpoSettings, SafetySettings

Log = Callable[[str], None]


def base_side(policy, tokenizer, consensus: safety.Consensus, prompts: list[str],
              cap: int) -> dict:
    """The base's greedy answers to the practice prompts and the head's scores of them (K,),
    computed once per head, number of prompts and cap and kept beside the head (as its
    red-team answers are): every later run pays only for the candidate's side."""
    def compute() -> dict:
        messages = safety.single_turns(prompts)
        texts = greedy_texts(policy, tokenizer, BASE, messages, cap)
        scores = consensus.score_texts(policy, tokenizer, messages, texts)
        return {"prompts": prompts, "texts": texts, "scores": scores.tolist()}
    return safety.beside_head(consensus, f"base-practice-{len(prompts)}-{cap}.json", compute)


def onpolicy_pairs(policy, tokenizer, consensus: safety.Consensus,
                   settings: SafetySettings) -> tuple[list[dict], dict]:
    """(DPO rows where the candidate's answer is less harmless than the base's, figures).
    `policy`: a PeftModel whose "default" adapter is the candidate."""
    prompts = safety.practice_prompts(settings, settings.onpolicy_prompts)
    if not prompts:
        return [], {"prompts": 0, "pairs": 0}
    cap, messages = settings.max_tokens, safety.single_turns(prompts)
    kept = base_side(policy, tokenizer, consensus, prompts, cap)
    base = kept["texts"]
    mine = greedy_texts(policy, tokenizer, "default", messages, cap)
    gap = (np.asarray(kept["scores"])
           - consensus.score_texts(policy, tokenizer, messages, mine))      # (K,)
    rows = [{"prompt": m, "chosen": [{"role": "assistant", "content": b}],
             "rejected": [{"role": "assistant", "content": c}]}
            for m, b, c, g in zip(messages, base, mine, gap, strict=True)
            if g > settings.onpolicy_margin and b.strip() != c.strip()]
    return rows, {"prompts": len(prompts), "pairs": len(rows),
                  "mean_gap": round(float(gap.mean()), 4)}


def safety_round(policy, tokenizer, consensus: safety.Consensus, settings: SafetySettings,
                 dpo: DpoSettings, log: Log = print, replay: list[dict] | None = None,
                 ) -> tuple[list[dict], dict]:
    """Find the candidate's on-policy safety pairs and fit them for `onpolicy_epochs`, shuffled
    in among the user's own pairs (`replay`) when `onpolicy_replay` is on:
    (DPO step records, figures). Step records carry "safety": True."""
    rows, info = onpolicy_pairs(policy, tokenizer, consensus, settings)
    mine = list(replay or []) if settings.onpolicy_replay and rows else []
    fit = replace(dpo, dpo_epochs=settings.onpolicy_epochs)
    steps = [{**s, "safety": True} for s in dpo_warm_start(policy, tokenizer, rows + mine, fit)]
    log(f"safety pairs: the candidate fell below the base on {info['pairs']} of "
        f"{info['prompts']} practice requests (mean gap {info.get('mean_gap', 0):+.3f}); "
        f"{len(steps)} DPO steps on them" + (f" and {len(mine)} of the user's" if mine else ""))
    return steps, info
