"""Shared helpers of the reward benchmarks: rich cached features and recipe slices.

bench/reward_features.py extracts one rich recipe (several layers x every pool) once;
these helpers read it back without a model forward and cut out any smaller recipe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adapters.base_model import load_tokenizer, resolve_source
from adapters.features import POOL_NAMES, DiskFeatureCache, _template, feature_spec, recipe_columns
from assistant.eval_reward import FEATURES_SUBDIR, Pair, read_pairs

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "data" / "cache"
SHARED = Path("/work/shared/data")
HH = SHARED / "hh-harmless-dev.jsonl"
RELABELED = SHARED / "relabeled-hh-dev.jsonl"
RICH = {"layers": (0.27, 0.4, 0.53), "pools": POOL_NAMES, "max_tokens": 512,
        "answer_tokens": 256}
HIDDEN = 576
# Recipes compared side by side (name -> layers, pools); all share RICH's token budget.
RECIPES = {
    "L16 mean+seq": ((0.53,), ("answer_mean", "sequence_mean")),
    "L16 mean+seq+last+nl": ((0.53,), ("answer_mean", "sequence_mean", "last",
                                       "newline_mean")),
    "L16 last+nl": ((0.53,), ("last", "newline_mean")),
    "L12+16 mean+seq": ((0.4, 0.53), ("answer_mean", "sequence_mean")),
    "L8+12+16 mean+seq": ((0.27, 0.4, 0.53), ("answer_mean", "sequence_mean")),
    "L12+16 all pools": ((0.4, 0.53), POOL_NAMES),
}


def rich_pairs(path: Path, limit: int | None = None) -> tuple[list[Pair], np.ndarray, np.ndarray]:
    """Pairs of a file whose rich features are all cached, and (chosen, rejected) rich
    features (N, 3 * 4 * 576) each, in file order."""
    tokenizer = load_tokenizer("", CACHE)
    cache = DiskFeatureCache(CACHE / FEATURES_SUBDIR, resolve_source("", CACHE).base_id,
                             feature_spec(RICH["layers"], RICH["max_tokens"], RICH["pools"],
                                          RICH["answer_tokens"]))
    kept, C, R = [], [], []
    for p in read_pairs(path):
        keys = [cache.key(_template(tokenizer, p.prompt, a)[1]) for a in (p.chosen, p.rejected)]
        if all(k in cache.vectors for k in keys):
            kept.append(p)
            C.append(cache.vectors[keys[0]])
            R.append(cache.vectors[keys[1]])
    if limit is not None:
        kept, C, R = kept[:limit], C[:limit], R[:limit]
    return kept, np.stack(C).astype(np.float64), np.stack(R).astype(np.float64)


def cut(X: np.ndarray, layers, pools) -> np.ndarray:
    """The columns of one recipe inside rich features."""
    return X[:, recipe_columns(HIDDEN, RICH["layers"], RICH["pools"], layers, pools)]
