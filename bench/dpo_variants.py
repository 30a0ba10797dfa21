"""Which DPO warm start learns a user's liked feature rather than only "shorter"? An A/B of
DpoSettings variants on stored feedback, in one process, same pairs, seeds and prompts.

For each user of a kept data dir (bench.personalize --keep-data) and each variant, a fresh
LoRA on the real base takes the DPO warm start on all of the user's preference pairs, exactly
as a training run's first stage does (adapters/dpo.py), then answers held-out prompts (the
same split as bench.personalize). The answers are judged by the user's persona file: win
rate against the base's stored answers, liked-feature share, words. No RL, no gate: this
isolates the stage the 60-event runs pointed at (README, issue 14). Without --base-answers
the base's answers are sampled here, with the same seed as every variant's. With --floor
every variant also takes the safety floor's check (adapters/safety.py: greedy answers to the
red-team prompts scored by the consensus head, against the base's), and a variant's
`safety_dpo_pairs=N` fits N of the floor's HH anchor pairs beside the user's, and
`safety_onpolicy_prompts=K` adds the on-policy safety round (adapters/safety_pairs.py) after
the warm start (needs --floor: the consensus head labels its pairs). A variant
`NAME:adapter=PATH` scores a trained adapter folder (a run's version) on the same prompts.

    .venv/bin/python -m bench.dpo_variants --data-dir /tmp/personalize-xyz \\
        --user analogies-explore-on --personas bench/personas-extra \\
        --base-answers bench/out/floor-off/answers.json \\
        --variant plain:dpo_nll_weight=0.0 --variant nll:dpo_nll_weight=1.0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.feedback import feature_share
from bench.harness import load_prompts, split_prompts, split_user
from bench.personas import load_personas
from bench.scoring import decisive, mean_words, win_rate

ROOT = Path(__file__).resolve().parent.parent


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """'name:key=value,key=value' -> (name, DpoSettings overrides)."""
    name, _, rest = text.partition(":")
    overrides: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = _value(value)
    return name, overrides


def _value(text: str) -> object:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--user", action="append", required=True, help="user name (repeatable)")
    p.add_argument("--personas", type=Path, required=True)
    p.add_argument("--variant", action="append", required=True, type=parse_variant,
                   help="name:key=value,... DpoSettings overrides (repeatable)")
    p.add_argument("--base-answers", type=Path,
                   help="answers.json of a bench run: the base's held-out answers "
                        "(default: sample them here)")
    p.add_argument("--floor", action="store_true",
                   help="also run the safety floor's check on every variant")
    p.add_argument("--safety-dir", type=Path, default=ROOT / "data" / "safety",
                   help="consensus heads (fitted there on first need)")
    p.add_argument("--safety-data", type=Path,
                   default=Path("/work/shared/data/hh-harmless-dev.jsonl"))
    p.add_argument("--prompts", type=Path, default=Path("/work/shared/data/prompts-dev.jsonl"))
    p.add_argument("--heldout", type=int, default=30)
    p.add_argument("--answer-prompts", type=int, default=16,
                   help="how many of the held-out prompts to answer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "dpo_variants.json")
    return p.parse_args(argv)


def answers(policy, tokenizer, prompts: list[str], args: argparse.Namespace) -> list[str]:
    """One sampled answer per prompt from the policy's active adapter (seeded)."""
    from adapters.decoding import completion_mask, decode, eos_ids, left_pad, render_prompts, sample

    rows = render_prompts(tokenizer, [[{"role": "user", "content": q}] for q in prompts])
    eos, out = eos_ids(policy, tokenizer), []
    torch.manual_seed(args.seed)
    for i in range(0, len(rows), 8):
        ids, mask = left_pad(rows[i:i + 8], tokenizer.pad_token_id)
        tokens = sample(policy, ids, mask, max_new_tokens=args.max_tokens,
                        temperature=args.temperature, eos=eos, pad_id=tokenizer.pad_token_id)
        out += decode(tokenizer, tokens, completion_mask(tokens, eos))
    return out


SAFETY_KEYS = {"safety_dpo_pairs": "dpo_pairs", "safety_onpolicy_prompts": "onpolicy_prompts",
               "safety_onpolicy_margin": "onpolicy_margin",
               "safety_onpolicy_epochs": "onpolicy_epochs",
               "safety_onpolicy_replay": "onpolicy_replay"}


def safety_settings(args: argparse.Namespace, overrides: dict | None = None):
    """The floor's settings, with a variant's safety_* overrides (SAFETY_KEYS)."""
    from adapters.settings import SafetySettings

    mine = {SAFETY_KEYS[k]: v for k, v in (overrides or {}).items() if k in SAFETY_KEYS}
    return SafetySettings(data_file=str(args.safety_data), store_dir=str(args.safety_dir),
                          features_dir=str(ROOT / "data" / "cache" / "features"), **mine)


def run_variant(base, pairs: list[dict], overrides: dict, prompts: list[str],
                args: argparse.Namespace, consensus=None) -> tuple[list[str], dict]:
    from adapters import safety
    from adapters.jobs import guarded_warm_start
    from adapters.policy import attach_lora
    from adapters.settings import DpoSettings, PolicySettings

    dpo = DpoSettings(**{k: v for k, v in overrides.items()
                         if k not in SAFETY_KEYS and k != "adapter"})
    guard = safety_settings(args, overrides)
    anchor = safety.dpo_anchor_rows(guard, guard.dpo_pairs)
    torch.manual_seed(args.seed)
    started, steps = time.perf_counter(), []
    if "adapter" in overrides:          # a trained adapter's folder, scored as it is
        from peft import PeftModel

        policy = PeftModel.from_pretrained(base.model, str(overrides["adapter"])).eval()
    else:
        policy = attach_lora(base.model, PolicySettings()).eval()
        steps = guarded_warm_start(policy, base.tokenizer, pairs, anchor, dpo, guard,
                                   consensus, log=lambda m: print(m, flush=True))
    seconds = time.perf_counter() - started
    texts = answers(policy, base.tokenizer, prompts, args)
    floor = floor_figures(policy, base.tokenizer, consensus, args) if consensus else None
    policy.unload()         # the plain base back for the next variant
    last = steps[-1] if steps else {}
    return texts, {"steps": len(steps), "dpo_seconds": round(seconds, 1),
                   "last_loss": round(last.get("loss", float("nan")), 4), "floor": floor}


def floor_figures(policy, tokenizer, consensus, args: argparse.Namespace) -> dict:
    """The gate's safety check (adapters/jobs.py), keeping both sides' answers."""
    from adapters import safety
    from adapters.jobs import redteam_sides

    settings = safety_settings(args)
    cand, base_side = redteam_sides(policy, tokenizer, consensus, settings)
    passed, reason = safety.floor_check(cand, base_side, settings)
    return {"candidate": cand, "base": base_side, "passed": passed, "reason": reason}


def base_answers(base, heldout: list[str], args: argparse.Namespace) -> list[list[str]]:
    """The base's answers (per prompt, a list of samples) to the first --answer-prompts
    held-out prompts: stored, or one sampled here."""
    k = args.answer_prompts
    if args.base_answers is None:
        return [[t] for t in answers(base.model, base.tokenizer, heldout[:k], args)]
    stored = json.loads(args.base_answers.read_text())
    if stored["heldout"] != heldout:
        raise SystemExit("--base-answers has other held-out prompts (same --heldout, --seed)")
    return stored["base"][:k]


def floor_text(floor: dict | None) -> str:
    if floor is None:
        return ""
    c, b = floor["candidate"], floor["base"]
    return (f" floor {'pass' if floor['passed'] else 'FAIL'}: harmless "
            f"{c['harmless_score']:+.2f} (base {b['harmless_score']:+.2f}) refusals "
            f"{c['refusals']} (base {b['refusals']})")


def main(argv: list[str] | None = None) -> int:
    from adapters.base_model import load_base
    from adapters.safety import ensure_consensus
    from feedback_store.db import connect
    from feedback_store.training_data import training_rows
    from feedback_store.users import get_user_by_name

    args = parse_args(argv)
    torch.set_num_threads(1)
    personas = {p.name: p for p in load_personas(args.personas)}
    _, heldout = split_prompts(load_prompts(args.prompts), args.heldout, args.seed)
    k = args.answer_prompts
    db = connect(args.data_dir / "assistant.db")
    base = load_base("", ROOT / "data" / "cache")
    prompts, base_texts = heldout[:k], base_answers(base, heldout, args)
    consensus = (ensure_consensus(base.model, base.tokenizer, base.base_id,
                                  safety_settings(args)) if args.floor else None)
    results: dict = {"prompts": k, "users": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for user in args.user:
        persona = personas[split_user(user)[0]]
        pairs = training_rows(db, get_user_by_name(db, user)["id"], "preference")
        results["users"][user] = {"pairs": len(pairs), "variants": {}}
        for name, overrides in args.variant:
            texts, info = run_variant(base, pairs, overrides, prompts, args, consensus)
            ours = [[t] for t in texts]
            row = {**info, "overrides": overrides, "win_rate": round(win_rate(persona, ours,
                                                                               base_texts), 3),
                   **decisive(persona, ours, base_texts),
                   "liked_share": feature_share(persona, ours),
                   "liked_share_base": feature_share(persona, base_texts),
                   "words": round(mean_words(ours), 1),
                   "answers": texts}
            results["users"][user]["variants"][name] = row
            print(f"{user} {name}: win {row['win_rate']} liked {row['liked_share']} "
                  f"(base {row['liked_share_base']}) words {row['words']} "
                  f"loss {row['last_loss']} ({row['dpo_seconds']} s)"
                  f"{floor_text(row['floor'])}", flush=True)
            args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
