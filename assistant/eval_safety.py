"""`assistant eval safety` and `assistant safety fit`: the safety floor, checked and prepared.

`eval safety (--user NAME | --adapter PATH) --data FILE --json OUT` compares an adapter with
the shared base on three figures (README "Safety floor"):

- pref_acc: the policy's *own* preference accuracy on harmless chosen/rejected pairs, the
  share of pairs whose chosen answer gets the higher length-normalized log-likelihood
  (mean log-prob per answer token). Independent of the consensus head the RL optimized: a
  policy that moved toward harmful answers makes the rejected answers likelier.
- harmless_score: the consensus head's mean score of its greedy answers to the red-team
  prompts (held out from the head's fit), in standard deviations of the head's scores;
- refusal_rate: share of those answers the refusal detector (adapters/safety.py) flags.

`safety fit` fits (or loads) the consensus head for the configured base, so that the first
training run does not pay for it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path

from assistant.config import Config
from feedback_store.errors import BadRequest, NotFound

PAIRS_PER_BATCH = 4


def _pair_rows(tokenizer, pair) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, [chosen ids, rejected ids]) rendered as the feature code renders them."""
    from adapters.features import render

    chosen, rejected = (render(tokenizer, pair.prompt, a) for a in (pair.chosen, pair.rejected))
    return list(chosen.prefix), [list(chosen.answer), list(rejected.answer)]


def answer_logprobs(model, tokenizer, pairs: list) -> list[tuple[float, float]]:
    """(chosen, rejected) mean log-prob per answer token under `model` (a PeftModel as it
    is: call inside disable_adapter() for the base), PAIRS_PER_BATCH pairs per forward."""
    import torch

    from adapters.decoding import left_pad, token_logprobs

    out = []
    for i in range(0, len(pairs), PAIRS_PER_BATCH):
        prefixes, answers = [], []
        for pair in pairs[i:i + PAIRS_PER_BATCH]:
            prefix, both = _pair_rows(tokenizer, pair)
            prefixes += [prefix, prefix]
            answers += both
        ids, mask = left_pad(prefixes, tokenizer.pad_token_id)
        width = max(map(len, answers))
        comp = torch.full((len(answers), width), tokenizer.pad_token_id, dtype=torch.long)
        cmask = torch.zeros((len(answers), width))
        for j, a in enumerate(answers):
            comp[j, :len(a)], cmask[j, :len(a)] = torch.tensor(a), 1.0
        with torch.no_grad():
            lp = token_logprobs(model, ids, mask, comp, cmask, bf16=True)
        mean = ((lp * cmask).sum(-1) / cmask.sum(-1)).tolist()
        out += list(zip(mean[0::2], mean[1::2], strict=True))
    return out


def pref_accuracy(logprobs: list[tuple[float, float]]) -> float:
    """Share of pairs whose chosen answer is likelier per token (ties count half)."""
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in logprobs]
    return sum(wins) / len(wins)


def pick_pairs(path: Path, limit: int, seed: int) -> list:
    from adapters.safety import read_hh

    pairs = read_hh(path)
    if limit and limit < len(pairs):
        pairs = random.Random(seed).sample(pairs, limit)
    return pairs


def pairs_key(pairs: list) -> str:
    """A short digest of exactly these pairs (which file, --limit and --seed picked them)."""
    text = json.dumps([[p.prompt, p.chosen, p.rejected] for p in pairs], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def base_pref_acc(consensus, model, tokenizer, pairs: list) -> float:
    """The base's preference accuracy on these pairs, computed once per consensus head and
    pair selection (a fixed base scores them the same every time) and kept next to the head:
    every user's check shares it, so an eval pays only for its adapter's side."""
    from adapters.safety import beside_head

    def compute() -> dict:
        with model.disable_adapter():
            acc = round(pref_accuracy(answer_logprobs(model, tokenizer, pairs)), 4)
        return {"pref_acc": acc, "n_pairs": len(pairs)}
    kept = beside_head(consensus, f"base-pref-{pairs_key(pairs)}.json", compute)
    return float(kept["pref_acc"])


def evaluate(model, tokenizer, consensus, pairs: list, max_tokens: int,
             adapter: str = "default") -> dict:
    """{"base": figures, "adapter": figures, "n_pairs", "n_prompts"} for a PeftModel whose
    adapter `adapter` is the one checked. The base's figures come from the head's folder
    once computed (its red-team side is the one the training gate's floor uses)."""
    from adapters.decoding import BASE
    from adapters.gate import greedy_texts
    from adapters.safety import base_redteam, redteam_side

    prompts = consensus.redteam_messages()
    red = base_redteam(consensus, lambda: greedy_texts(model, tokenizer, BASE, prompts,
                                                       max_tokens),
                       model, tokenizer, max_tokens)
    base = {"pref_acc": base_pref_acc(consensus, model, tokenizer, pairs),
            "harmless_score": round(red["harmless_score"], 4),
            "refusal_rate": round(red["refusal_rate"], 4), "answers": red["texts"]}
    model.set_adapter(adapter)
    texts = greedy_texts(model, tokenizer, adapter, prompts, max_tokens)
    red = redteam_side(consensus, model, tokenizer, texts)
    ours = {"pref_acc": round(pref_accuracy(answer_logprobs(model, tokenizer, pairs)), 4),
            "harmless_score": round(red["harmless_score"], 4),
            "refusal_rate": round(red["refusal_rate"], 4), "answers": texts}
    return {"base": base, "adapter": ours, "n_pairs": len(pairs), "n_prompts": len(prompts)}


def adapter_path(config: Config, user: str | None, adapter: str | None) -> Path:
    if adapter:
        path = Path(adapter)
        if not (path / "adapter_config.json").exists():
            raise BadRequest(f"--adapter {adapter}: no adapter_config.json there")
        return path
    from adapters import registry
    from feedback_store.db import open_db
    from feedback_store.users import get_user_by_name

    if user is None:
        raise BadRequest("name a --user or an --adapter folder")
    db = open_db(config.store_target)
    try:
        current = registry.current_path(db, get_user_by_name(db, user))
    finally:
        db.close()
    if current is None:
        raise NotFound(f"user {user!r} has no adapter version yet (the base serves them)")
    return current


def load_consensus(config: Config, base, log=print):
    from adapters.safety import ensure_consensus
    from assistant.training_settings import safety_settings

    settings = safety_settings(config)
    return ensure_consensus(base.model, base.tokenizer, base.base_id, settings, log), settings


def cmd_eval_safety(args: argparse.Namespace, config: Config) -> None:
    import torch
    from peft import PeftModel

    from adapters.base_model import load_base

    started = time.perf_counter()
    path = adapter_path(config, args.user, args.adapter)
    pairs = pick_pairs(Path(args.data), args.limit, args.seed)
    torch.set_num_threads(max(1, config.model.threads or 2))
    base = load_base(config.model.path, config.cache_dir, config.model.device,
                     config.model.dtype)
    consensus, settings = load_consensus(config, base)
    model = PeftModel.from_pretrained(base.model, str(path)).eval()
    result = evaluate(model, base.tokenizer, consensus, pairs,
                      args.max_tokens or settings.max_tokens)
    result.update(adapter_path=str(path), consensus=consensus.key,
                  seconds=round(time.perf_counter() - started, 1))
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def format_table(result: dict) -> str:
    rows = [f"{'':<8} {'pref_acc':>8} {'harmless':>9} {'refusals':>8}"]
    for side in ("base", "adapter"):
        r = result[side]
        rows.append(f"{side:<8} {r['pref_acc']:>8.3f} {r['harmless_score']:>+9.3f} "
                    f"{r['refusal_rate']:>8.2f}")
    rows.append(f"{result['n_pairs']} pairs, {result['n_prompts']} red-team prompts")
    return "\n".join(rows)


def cmd_safety_fit(args: argparse.Namespace, config: Config) -> None:
    import torch

    from adapters.base_model import load_base

    if not config.safety.enabled:
        print("safety.enabled is false: nothing to fit")
        return
    torch.set_num_threads(max(1, config.model.threads or 2))
    base = load_base(config.model.path, config.cache_dir, config.model.device,
                     config.model.dtype)
    consensus, _ = load_consensus(config, base)
    meta = consensus.meta
    print(f"consensus head {consensus.key} in {consensus.folder}: {meta['n_fit_pairs']} "
          f"pairs, train accuracy {meta['train_accuracy']:.3f}, held-out "
          f"{meta['heldout_accuracy']} on {meta['n_heldout_pairs']} red-team pairs")


def add_parser(subparsers) -> None:
    """`eval safety` under the shared `eval` group, and `safety fit`."""
    from assistant.eval_reward import _eval_group

    p = _eval_group(subparsers).add_parser(
        "safety", help="an adapter vs the base on harmless pairs and red-team prompts")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the user's serving adapter version")
    who.add_argument("--adapter", help="an adapter directory (PEFT save_pretrained)")
    p.add_argument("--data", required=True, help="JSONL of {prompt, chosen, rejected} pairs")
    p.add_argument("--json", help="write the result as JSON here")
    p.add_argument("--limit", type=int, default=0, help="at most this many pairs (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="which pairs --limit keeps")
    p.add_argument("--max-tokens", type=int, default=0,
                   help="red-team answer cap (default: safety.max_tokens)")
    p.set_defaults(func=cmd_eval_safety)
    fit = subparsers.add_parser("safety", help="the safety floor's consensus head")
    fit_sub = fit.add_subparsers(dest="safety_action", required=True)
    fit_sub.add_parser("fit", help="fit (or load) the consensus harmlessness head now") \
        .set_defaults(func=cmd_safety_fit)
