"""Feature recipes x head methods, side by side, on the same split seeds.

Usage: OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/reward_heads.py \
    [--seeds 5] [--recipes NAME,...] [--methods global,personal,...] [--files hh,relabeled]

Reads the rich features of bench/reward_features.py from the disk cache (only pairs whose
features are cached: a partial extraction gives a uniform sample) and cuts each recipe
out of them (bench/reward_common.py RECIPES), so no model forward runs here. For each file,
recipe, user and method: held-out pair accuracy and ECE, mean and std over the seeds.
Writes bench/out/reward_heads.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time

from adapters.settings import HeadSettings
from assistant.eval_reward import DEFAULT_METHODS, evaluate, split_users, summarize
from bench.reward_common import HH, RECIPES, RELABELED, ROOT, cut, rich_pairs

FILES = {"hh": HH, "relabeled": RELABELED}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--files", default="hh,relabeled")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "reward_heads.json"))
    args = ap.parse_args()
    methods = tuple(args.methods.split(","))
    report: dict = {"seeds": args.seeds, "methods": methods, "results": {}}
    for name in args.files.split(","):
        pairs, C, R = rich_pairs(FILES[name])
        report["results"][name] = {"pairs": len(pairs), "recipes": {}}
        for recipe in args.recipes.split(","):
            layers, pools = RECIPES[recipe]
            Cr, Rr = cut(C, layers, pools), cut(R, layers, pools)
            start = time.perf_counter()
            per_seed = {s: evaluate(Cr, Rr, split_users(pairs, 0.5, s), HeadSettings(),
                                    methods, s) for s in range(args.seeds)}
            summary = summarize(per_seed)
            report["results"][name]["recipes"][recipe] = {
                "dim": int(Cr.shape[1]), "summary": summary, "per_seed": per_seed,
                "seconds": round(time.perf_counter() - start, 1)}
            print_rows(name, len(pairs), recipe, summary, methods)
            write(report, args.out)


def print_rows(name: str, n: int, recipe: str, summary: dict, methods) -> None:
    for user, r in summary.items():
        cells = " ".join(f"{m}={r['acc'][m][0]:.3f}+-{r['acc'][m][1]:.3f}"
                         f"[{r['ece'][m][0]:.3f}]" for m in methods)
        print(f"{name}({n}) | {recipe:<22} | {user:<13} | {cells}", flush=True)


def write(report: dict, out: str) -> None:
    from pathlib import Path

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
