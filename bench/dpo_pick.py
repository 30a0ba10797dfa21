"""Could the user's own reward head pick the DPO warm start their persona prefers?

Reads a `bench.dpo_variants` result (each variant's answers to the same held-out prompts, with
the persona's verdicts) and scores every variant's answers with a reward head saved by a
training run on the same user's feedback (`<data dir>/adapters/<user>/reward/<version>`).
It prints each variant's mean head reward and the paired t of its per-prompt gain over the
first variant, next to the persona's win rate and liked-feature share, and marks a variant
that clears `--z` (a rule "switch only if the head is sure"). Measured (README, "DPO
variants"): the head could not make this choice, so the product does not ask it to.

    .venv/bin/python -m bench.dpo_pick --variants bench/out/dpo_variants.json \\
        --user summarizer-explore-on --head /tmp/d/adapters/summarizer-explore-on/reward/1
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bench.harness import load_prompts, split_prompts

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", type=Path, required=True, help="bench.dpo_variants output")
    p.add_argument("--user", required=True)
    p.add_argument("--head", type=Path, required=True, help="a saved reward head folder")
    p.add_argument("--prompts", type=Path, default=Path("/work/shared/data/prompts-dev.jsonl"))
    p.add_argument("--heldout", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--z", type=float, default=2.0,
                   help="standard errors a variant's gain must clear to be marked")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "dpo_pick.json")
    return p.parse_args(argv)


def paired_gain(ours: list[float], theirs: list[float]) -> tuple[float, float]:
    """(mean, standard error) of the per-prompt differences ours - theirs."""
    d = [a - b for a, b in zip(ours, theirs, strict=True)]
    mean = sum(d) / len(d)
    if len(d) < 2:
        return mean, float("inf")
    return mean, math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))


def _liked(shares: dict[str, float]) -> float | None:
    """The persona's liked-feature share: "any" of its phrases, or its one feature."""
    return shares.get("any", next(iter(shares.values()), None))


def main(argv: list[str] | None = None) -> int:
    import torch

    from adapters.base_model import load_base
    from adapters.jobs import reward_function
    from adapters.reward_head import RewardHead

    args = parse_args(argv)
    torch.set_num_threads(1)
    found = json.loads(args.variants.read_text())
    variants = found["users"][args.user]["variants"]
    _, heldout = split_prompts(load_prompts(args.prompts), args.heldout, args.seed)
    prompts = [[{"role": "user", "content": q}] for q in heldout[:found["prompts"]]]
    base = load_base("", ROOT / "data" / "cache")
    score = reward_function(base, RewardHead.load(args.head))
    rewards = {name: score(prompts, row["answers"]) for name, row in variants.items()}
    names = list(variants)
    first = rewards[names[0]]
    rows = []
    for name in names:
        gain, se = paired_gain(rewards[name], first)
        rows.append({"variant": name, "head_reward": sum(rewards[name]) / len(prompts),
                     "gain": gain, "t": gain / se if se not in (0.0, float("inf")) else None,
                     "head_sure": name != names[0] and 0 < gain and args.z * se < gain,
                     "win_rate": variants[name]["win_rate"],
                     "liked": _liked(variants[name]["liked_share"])})
    print(f"{args.user}: head {args.head}, z = {args.z}")
    for r in rows:
        t = "-" if r["t"] is None else f"{r['t']:+.2f}"
        print(f"  {r['variant']:8} head {r['head_reward']:+.3f} gain {r['gain']:+.3f} t {t} "
              f"| persona win {r['win_rate']} liked {r['liked']}"
              + ("  <- the head is sure it beats the first" if r["head_sure"] else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"user": args.user, "head": str(args.head), "z": args.z,
                                    "variants": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
