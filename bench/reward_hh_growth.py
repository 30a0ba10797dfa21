"""How HH-harmless accuracy grows with training pairs, per feature recipe (is 0.68 in reach?).

Usage: OMP_NUM_THREADS=1 .venv/bin/python -m bench.reward_hh_growth \
    [--seeds 5] [--recipes "L16 mean+seq,..."] [--sizes 60,120,240,480] [--l2 1]

HH-harmless has one user, so the head is a plain L2 head (the product's global head, and
what personal+prior reduces to). For each recipe (cut out of bench/reward_features.py's
rich cache, bench/reward_common.py RECIPES), seed and size n: the first n pairs of the
seed's training half, accuracy on its test half. The last column fits
acc = a + b * log2(n) over the sizes and says how many training pairs that line would need
for 0.68 (a trend, not a promise). Writes bench/out/reward_hh_growth.json.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from adapters.reward_head import HeadSettings, fit_head
from assistant.eval_reward import split_users
from bench.reward_common import HH, RECIPES, ROOT, cut, rich_pairs

TARGET = 0.68


def growth(C, R, pairs, sizes, seeds: int, l2: float) -> dict[int, list[float]]:
    """{n: [accuracy per seed]} of a plain head on the first n training pairs."""
    settings = HeadSettings(shared_prior=False, l2=l2)
    none = (np.zeros((0, C.shape[1])), np.zeros(0))
    out: dict[int, list[float]] = {n: [] for n in sizes}
    for seed in range(seeds):
        (train, test), = split_users(pairs, 0.5, seed).values()
        for n in sizes:
            head = fit_head(C[train[:n]], R[train[:n]], *none, settings)
            m = head.score(C[test]) - head.score(R[test])
            out[n].append(float(np.mean((m > 0) + 0.5 * (m == 0))))
    return out


def pairs_for_target(by_n: dict[int, list[float]]) -> float:
    """Training pairs at which the log-linear trend of the means reaches TARGET (inf if it
    does not rise)."""
    ns = np.array(sorted(by_n), dtype=float)
    b, a = np.polyfit(np.log2(ns), [np.mean(by_n[int(n)]) for n in ns], 1)
    return float(2 ** ((TARGET - a) / b)) if b > 0 else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--sizes", default="60,120,240,480")
    ap.add_argument("--l2", type=float, default=1.0)
    args = ap.parse_args()
    pairs, C, R = rich_pairs(HH)
    n_train = min(len(tr) for tr, _ in (split_users(pairs, 0.5, s)["hh-annotators"]
                                        for s in range(args.seeds)))
    sizes = [int(s) for s in args.sizes.split(",") if int(s) < n_train] + [n_train]
    report: dict = {"pairs": len(pairs), "sizes": sizes, "l2": args.l2, "recipes": {}}
    print(f"| recipe | {' | '.join(str(n) for n in sizes)} | pairs for {TARGET} (trend) |")
    print("| --- |" + " --- |" * (len(sizes) + 1))
    for recipe in args.recipes.split(","):
        layers, pools = RECIPES[recipe]
        by_n = growth(cut(C, layers, pools), cut(R, layers, pools), pairs, sizes, args.seeds,
                      args.l2)
        need = pairs_for_target(by_n)
        report["recipes"][recipe] = {"acc": by_n, "pairs_for_target": need}
        cells = " | ".join(f"{np.mean(v):.3f} +- {np.std(v):.3f}" for v in by_n.values())
        print(f"| {recipe} | {cells} | {need:,.0f} |", flush=True)
    out = ROOT / "bench" / "out" / "reward_hh_growth.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
