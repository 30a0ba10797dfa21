"""Extract one rich set of frozen features for the shared dev files, once, into the disk cache.

Usage: OMP_NUM_THREADS=1 .venv/bin/python -m bench.reward_features \
    [--data FILE.jsonl ...] [--layers 0.27,0.4,0.53] [--max-tokens 512] \
    [--answer-tokens 256]

Every layer x pool combination is computed in one forward (the forward stops at the deepest
layer), and bench/reward_heads.py slices any smaller recipe out of it
(adapters.features.recipe_columns), so comparing recipes costs one extraction. Prints the
cost per 1,000 texts; writes bench/out/reward_features.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from adapters.features import POOL_NAMES
from assistant.eval_reward import FEATURES_SUBDIR, pair_features, read_pairs

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "data" / "cache"
SHARED = next((p for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data"))
               if p.exists()), ROOT.parent / "shared" / "data")
DEFAULT_DATA = [SHARED / "hh-harmless-dev.jsonl", SHARED / "relabeled-hh-dev.jsonl"]
RICH_LAYERS = (0.27, 0.4, 0.53)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="*", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--layers", default=",".join(map(str, RICH_LAYERS)))
    ap.add_argument("--pools", default=",".join(POOL_NAMES))
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--answer-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    recipe = {"layers": tuple(float(x) for x in args.layers.split(",")),
              "pools": tuple(args.pools.split(",")), "max_tokens": args.max_tokens,
              "answer_tokens": args.answer_tokens}
    report: dict = {"recipe": recipe, "files": [p.name for p in args.data]}
    # Pairs of every file in one shuffled order: if the run is stopped early, what is
    # cached is a uniform sample of each file (eval reward --cached-only uses it).
    pairs = [p for path in args.data for p in read_pairs(path)]
    pairs = [pairs[i] for i in np.random.default_rng(0).permutation(len(pairs))]
    start = time.perf_counter()
    pair_features(pairs, CACHE, "", args.threads, **recipe)
    seconds = time.perf_counter() - start
    report.update(texts=2 * len(pairs), seconds=round(seconds, 1))
    print(report, flush=True)
    out = ROOT / "bench" / "out" / "reward_features.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print("cache:", CACHE / FEATURES_SUBDIR)


if __name__ == "__main__":
    main()
