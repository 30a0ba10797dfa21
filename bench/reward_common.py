"""Shared helpers of the reward benchmarks: rich cached features and recipe slices.

bench/reward_features.py extracts one rich recipe (several layers x every pool) once;
these helpers read it back without a model forward and cut out any smaller recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import numpy as np

from adapters.base_model import load_tokenizer, resolve_source
from adapters.feature_cache import DiskFeatureCache
from adapters.features import POOL_NAMES, feature_spec, recipe_columns, template_text
from assistant.eval_reward import FEATURES_SUBDIR, Pair, read_pairs

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "data" / "cache"
# The shared data: next to the checkout (../shared, as for /work/main) or at /work/shared.
SHARED = next((p for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data"))
               if p.exists()), ROOT.parent / "shared" / "data")
HH = SHARED / "hh-harmless-dev.jsonl"
RELABELED = SHARED / "relabeled-hh-dev.jsonl"


class Recipe(TypedDict):
    """A feature recipe (adapters.features.feature_spec's arguments)."""

    layers: tuple[float, ...]
    pools: tuple[str, ...]
    max_tokens: int
    answer_tokens: int


RICH: Recipe = {"layers": (0.27, 0.4, 0.53), "pools": POOL_NAMES, "max_tokens": 512,
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
        keys = [cache.key(template_text(tokenizer, p.prompt, a)[1]) for a in (p.chosen, p.rejected)]
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


def materialize_cache(layers, pools, paths=(HH, RELABELED)) -> int:
    """Write the disk cache of recipe (layers, pools) at RICH's token budget from the rich
    one, for every cached text of these files; `assistant eval reward --layers ... --pools
    ... --max-tokens 512 --answer-tokens 256` then reads them without a forward. Returns
    the number of vectors written."""
    tokenizer = load_tokenizer("", CACHE)
    base_id = resolve_source("", CACHE).base_id
    rich = DiskFeatureCache(CACHE / FEATURES_SUBDIR, base_id,
                            feature_spec(RICH["layers"], RICH["max_tokens"], RICH["pools"],
                                         RICH["answer_tokens"]))
    product = DiskFeatureCache(CACHE / FEATURES_SUBDIR, base_id,
                               feature_spec(layers, RICH["max_tokens"], pools,
                                            RICH["answer_tokens"]))
    cols = recipe_columns(HIDDEN, RICH["layers"], RICH["pools"], layers, pools)
    keys, rows = [], []
    for path in paths:
        for p in read_pairs(path):
            for a in (p.chosen, p.rejected):
                text = template_text(tokenizer, p.prompt, a)[1]
                k_rich, k_prod = rich.key(text), product.key(text)
                if k_rich in rich.vectors and k_prod not in product.vectors:
                    keys.append(k_prod)
                    rows.append(rich.vectors[k_rich][cols])
                    product.vectors[k_prod] = rows[-1]
    if keys:
        product.put(keys, np.stack(rows))
    return len(keys)
