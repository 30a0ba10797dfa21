"""Time fitting reward heads on 1,000 feedback events with cached features.

Usage: .venv/bin/python -m bench.reward_fit [--data FILE.jsonl] [--events 1000] \
    [--recipe "L16 mean+seq"]

Features come from the disk cache that `assistant eval reward` fills (no model forward
here), or with --recipe from bench/reward_features.py's rich cache cut to that recipe
(bench/reward_common.py RECIPES); when the file's features are not cached, Gaussian
features of the same width stand in, which times the fit just as well. Events are 60%
pairs and 40% single thumbs.
Writes bench/out/reward_fit.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np

from adapters.base_model import load_tokenizer, resolve_source
from adapters.ensemble import fit_ensemble
from adapters.feature_cache import DiskFeatureCache
from adapters.features import feature_spec, render
from adapters.head_selection import fit_evidence_head, fit_selected_head
from adapters.reward_head import HeadSettings, cross_val_accuracy, fit_head

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "reward_fit.json"
CACHE = ROOT / "data" / "cache"
SYNTHETIC_DIM = 1152      # the product recipe's width (2 pools x 576), see --dim
CPU_TIME = False
Params = ParamSpec("Params")
Result = TypeVar("Result")


def cached_pairs(data: Path, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Up to n (chosen, rejected) feature pairs from the disk cache, else synthetic."""
    tokenizer = load_tokenizer("", CACHE)
    cache = DiskFeatureCache(CACHE / "features", resolve_source("", CACHE).base_id,
                             feature_spec())
    C, R = [], []
    for line in data.read_text().splitlines()[: 2 * n]:
        row = json.loads(line)
        keys = [cache.key(render(tokenizer, row["prompt"], row[s]).text)
                for s in ("chosen", "rejected")]
        if all(k in cache.vectors for k in keys):
            C.append(cache.vectors[keys[0]])
            R.append(cache.vectors[keys[1]])
    if len(C) >= n:
        return np.stack(C[:n]), np.stack(R[:n]), "cached"
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, SYNTHETIC_DIM)), rng.normal(size=(n, SYNTHETIC_DIM)), "synthetic"


def timed(fn: Callable[Params, Result], *args: Params.args,
          **kw: Params.kwargs) -> tuple[Result, float]:
    """(result, seconds); seconds are CPU seconds of this process when --cpu-time is set
    (on a shared machine wall time mostly measures the other jobs)."""
    clock = time.process_time if CPU_TIME else time.perf_counter
    start = clock()
    result = fn(*args, **kw)
    return result, clock() - start


def recipe_pairs(data: Path, n: int, recipe: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Up to n feature pairs of one recipe cut out of the rich cache."""
    from bench.reward_common import RECIPES, cut, rich_pairs

    _, C, R = rich_pairs(data, limit=n)
    return cut(C, *RECIPES[recipe]), cut(R, *RECIPES[recipe]), f"cached, {recipe}"


def bench(data: Path, events: int, recipe: str | None = None) -> dict:
    n_pairs, n_thumbs = int(events * 0.6), events - int(events * 0.6)
    n = n_pairs + (n_thumbs + 1) // 2
    C, R, source = recipe_pairs(data, n, recipe) if recipe else cached_pairs(data, n)
    # Thumbs: up on the chosen side, down on the rejected side of pairs not used as pairs.
    rest_c, rest_r = C[n_pairs:], R[n_pairs:]
    T = np.concatenate([rest_c, rest_r])[:n_thumbs]
    y = np.concatenate([np.ones(len(rest_c)), np.zeros(len(rest_r))])[:n_thumbs]
    C, R = C[:n_pairs], R[:n_pairs]
    settings = HeadSettings()
    global_head, t_global = timed(fit_head, C, R, T, y, HeadSettings(shared_prior=False))
    _, t_user = timed(fit_head, C, R, T, y, settings, global_head)
    # No prior here: a prior fitted on the held-out folds would leak them into the estimate.
    cv, t_cv = timed(cross_val_accuracy, C, R, T, y, HeadSettings(shared_prior=False))
    _, t_sel = timed(fit_selected_head, C, R, T, y, settings, global_head)
    _, t_evi = timed(fit_evidence_head, C, R, T, y, settings, global_head)
    _, t_ens = timed(fit_ensemble, C, R, T, y, settings, global_head, k=8)
    # None: under 2 pairs to cross-validate (--events 3 or less), where float(None) crashed.
    accuracy = None if cv is None else round(float(cv), 4)
    return {"features": source, "dim": int(C.shape[1]), "pairs": n_pairs, "thumbs": n_thumbs,
            "clock": "cpu" if CPU_TIME else "wall",
            "seconds": {"global_fit": round(t_global, 3), "user_fit_with_prior": round(t_user, 3),
                        "cross_val_5_fold": round(t_cv, 3),
                        "user_fit_selected_prior": round(t_sel, 3),
                        "user_fit_evidence_prior": round(t_evi, 3),
                        "ensemble_8_with_prior": round(t_ens, 3)},
            "cv_accuracy": accuracy, "machine": platform.machine()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path,
                   default=Path("/work/shared/data/hh-harmless-dev.jsonl"))
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--dim", type=int, default=1152,
                   help="width of the stand-in Gaussian features when none are cached")
    p.add_argument("--recipe", help="a bench/reward_common.py RECIPES name: cut it out of "
                   "the rich cache of bench/reward_features.py")
    p.add_argument("--cpu-time", action="store_true",
                   help="report CPU seconds of this process instead of wall seconds")
    args = p.parse_args()
    global CPU_TIME, SYNTHETIC_DIM
    CPU_TIME, SYNTHETIC_DIM = args.cpu_time, args.dim
    import torch

    torch.set_num_threads(1)
    result = bench(args.data, args.events, args.recipe)
    print(f"{'step':<26} {result['clock'] + ' s':>8}")
    for step, secs in result["seconds"].items():
        print(f"{step:<26} {secs:>8.3f}")
    print(f"{result['pairs']} pairs + {result['thumbs']} thumbs, D={result['dim']} "
          f"({result['features']} features), 5-fold CV accuracy {result['cv_accuracy']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
