"""`assistant eval reward`: held-out accuracy of global vs personal reward heads.

Reads preference pairs in the shared/DATA.md format (one JSON object per line with `user`,
`prompt` = list of messages, `chosen`, `rejected`), splits each user's pairs into train and
test with a seed, and compares on each user's test pairs:
- global: one head fitted on every user's training pairs;
- personal: a head fitted on the user's training pairs alone (plain L2);
- personal_prior: the same, pulled toward the global head (the shared prior).
Features come from the frozen base through a disk cache, so a re-run only fits heads.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from adapters.calibration import expected_calibration_error, pair_ece
from adapters.ensemble import fit_ensemble
from adapters.head_selection import fit_evidence_head, fit_selected_head
from adapters.lowrank import fit_lowrank
from adapters.reward_head import fit_head
from adapters.settings import HeadSettings
from feedback_store.errors import BadRequest

FEATURES_SUBDIR = "features"
DEFAULT_SETTINGS = HeadSettings()
# global / personal / personal_prior: the heads as the product fitted them so far (fixed
# L2 and prior strength); global_cv: L2 chosen by 5-fold CV, temperature-scaled;
# selected: per-user prior target and strength chosen by CV, toward the other users'
# consensus as in the product (adapters/jobs.py fit_prior), temperature-scaled
# (adapters/head_selection.py); evidence: the same grid toward the same consensus, the
# point chosen by Laplace evidence (empirical Bayes, no folds); lowrank: shared basis +
# per-user weights (adapters/lowrank.py); ensemble: 8 bootstrap heads with the prior
# (adapters/ensemble.py).
METHODS = ("global", "personal", "personal_prior", "global_cv", "selected", "evidence",
           "lowrank", "ensemble")
DEFAULT_METHODS = ("global", "personal", "personal_prior", "global_cv", "selected")
LOWRANK_RANK = 4
ENSEMBLE_K = 8


@dataclass(frozen=True)
class Pair:
    user: str
    prompt: list[dict]
    chosen: str
    rejected: str


def _parse_line(number: int, line: str) -> Pair:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"line {number}: not valid JSON ({exc.msg})") from exc
    ok = (isinstance(row, dict) and isinstance(row.get("user"), str)
          and isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str)
          and isinstance(row.get("prompt"), list) and row["prompt"]
          and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                  and isinstance(m.get("content"), str) for m in row["prompt"]))
    if not ok:
        raise BadRequest(f"line {number}: expected {{user, prompt: [messages], chosen, "
                         f"rejected}}")
    return Pair(row["user"], row["prompt"], row["chosen"], row["rejected"])


def read_pairs(path: Path) -> list[Pair]:
    """Every pair in a JSONL file; BadRequest names the first malformed line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRequest(f"cannot read {path}: {exc}") from exc
    pairs = [_parse_line(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    if not pairs:
        raise BadRequest(f"{path} holds no pairs")
    return pairs


def split_users(pairs: list[Pair], train_frac: float, seed: int) -> dict[str, tuple]:
    """user -> (train indices, test indices); each user's split depends only on the seed
    and the user's name, so adding users elsewhere does not reshuffle anyone."""
    if not 0 < train_frac < 1:
        raise BadRequest(f"--train-frac must be in (0, 1), got {train_frac}")
    by_user: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_user.setdefault(p.user, []).append(i)
    splits = {}
    for user, idx in sorted(by_user.items()):
        rng = np.random.default_rng([seed, zlib.crc32(user.encode())])
        order = np.array(idx)[rng.permutation(len(idx))]
        cut = min(max(1, round(train_frac * len(idx))), len(idx) - 1) if len(idx) > 1 else 1
        splits[user] = (order[:cut], order[cut:])
    return splits


def pair_features(pairs: list[Pair], cache_dir: Path, model_path: str,
                  threads: int = 2, **recipe) -> tuple:
    """(chosen (N, D), rejected (N, D)) from the frozen base, through the disk cache.

    recipe: layers, pools, max_tokens, answer_tokens (adapters.features defaults)."""
    import torch

    from adapters.base_model import load_base, load_tokenizer, resolve_source
    from adapters.feature_cache import disk_cached_features

    # Two threads on the 2-core target; on a busy machine 1 avoids spinning threads.
    torch.set_num_threads(max(1, threads))
    base_id = resolve_source(model_path, cache_dir).base_id
    items = [(p.prompt, a) for p in pairs for a in (p.chosen, p.rejected)]
    X = disk_cached_features(lambda: load_base(model_path, cache_dir).model,
                             load_tokenizer(model_path, cache_dir), base_id, items,
                             cache_dir / FEATURES_SUBDIR, progress=_progress, **recipe)
    return X[0::2], X[1::2]


def _progress(done: int, total: int) -> None:
    print(f"  features: {done}/{total} new texts at {time.strftime('%H:%M:%S')}", flush=True)


def _margins(head, C: np.ndarray, R: np.ndarray) -> np.ndarray:
    return head.score(C) - head.score(R)


def _method_heads(C, R, splits, settings: HeadSettings, methods: tuple[str, ...],
                  seed: int) -> dict[str, dict]:
    """{method: {user: fitted head (anything with .score)}} on each user's training pairs."""
    train = {u: tr for u, (tr, _) in splits.items()}
    train_all = np.concatenate(list(train.values()))
    shared: dict[str, Any] = {"global": fit_head(C[train_all], R[train_all], *_no_thumbs(C),
                                 replace(settings, shared_prior=False))}
    if "global_cv" in methods:
        shared["global_cv"] = fit_selected_head(
            C[train_all], R[train_all], *_no_thumbs(C), replace(settings, shared_prior=False),
            None, seed=seed).head
    # As in the product, the selected priors never saw the user's own data.
    if "selected" in methods or "evidence" in methods:
        shared["others"] = {u: _others_head(C, R, train, u, settings) for u in train}
    if "lowrank" in methods:
        shared["lowrank"] = fit_lowrank({u: (C[tr], R[tr]) for u, tr in train.items()},
                                        rank=LOWRANK_RANK, seed=seed)
    return {m: {u: _user_head(m, C[tr], R[tr], u, shared, settings, seed)
                for u, tr in train.items()} for m in methods}


def _others_head(C, R, train: dict, user: str, settings: HeadSettings):
    """The consensus over every other user's training pairs (None if there is nobody)."""
    others = [tr for u, tr in train.items() if u != user]
    if not others:
        return None
    idx = np.concatenate(others)
    return fit_head(C[idx], R[idx], *_no_thumbs(C), replace(settings, shared_prior=False))


def _no_thumbs(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, C.shape[1])), np.zeros(0)


def _user_head(method: str, Cu, Ru, user: str, shared: dict, settings: HeadSettings,
               seed: int):
    """One user's head by one method, from the user's training pairs (Cu, Ru)."""
    if method in ("global", "global_cv"):
        return shared[method]
    if method == "lowrank":
        return shared["lowrank"].user_head(user)
    with_prior = replace(settings, shared_prior=True)
    if method == "personal":
        return fit_head(Cu, Ru, *_no_thumbs(Cu), replace(settings, shared_prior=False))
    if method == "personal_prior":
        return fit_head(Cu, Ru, *_no_thumbs(Cu), with_prior, prior=shared["global"])
    if method == "selected":
        return fit_selected_head(Cu, Ru, *_no_thumbs(Cu), settings, shared["others"][user],
                                 seed=seed).head
    if method == "evidence":
        return fit_evidence_head(Cu, Ru, *_no_thumbs(Cu), settings, shared["others"][user]).head
    return fit_ensemble(Cu, Ru, *_no_thumbs(Cu), with_prior, shared["global"], k=ENSEMBLE_K,
                        seed=seed)


def evaluate(C: np.ndarray, R: np.ndarray, splits: dict[str, tuple],
             settings: HeadSettings, methods: tuple[str, ...] = DEFAULT_METHODS,
             seed: int = 0) -> dict[str, dict]:
    """Per user: held-out accuracy and ECE (of P(chosen > rejected), 10 bins) per method.

    {user: {"acc": {method: a}, "ece": {method: e}, "n_train": n, "n_test": n}}.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BadRequest(f"unknown methods {unknown}; known: {list(METHODS)}")
    heads = _method_heads(C, R, splits, settings, methods, seed)
    users = {}
    for user, (tr, te) in splits.items():
        acc, ece = {}, {}
        for m in methods:
            head = heads[m][user]
            if hasattr(head, "prob_prefers"):          # an ensemble: mean of sigmoids
                p = head.prob_prefers(C[te], R[te])
                acc[m] = float(np.mean((p > 0.5) + 0.5 * (p == 0.5)))
                ece[m] = expected_calibration_error(np.concatenate([p, 1 - p]), np.r_[
                    np.ones(len(p)), np.zeros(len(p))])
            else:
                margin = _margins(head, C[te], R[te])
                acc[m] = float(np.mean((margin > 0) + 0.5 * (margin == 0)))
                ece[m] = pair_ece(margin)
        users[user] = {"acc": {m: round(v, 4) for m, v in acc.items()},
                       "ece": {m: round(v, 4) for m, v in ece.items()},
                       "n_train": int(len(tr)), "n_test": int(len(te))}
    return users


def summarize(per_seed: dict[int, dict]) -> dict[str, dict]:
    """{user: {"acc": {method: [mean, std]}, "ece": {...}, n_train, n_test}} over seeds."""
    first = next(iter(per_seed.values()))
    out = {}
    for user, r in first.items():
        out[user] = {"n_train": r["n_train"], "n_test": r["n_test"]}
        for what in ("acc", "ece"):
            out[user][what] = {}
            for m in r[what]:
                vals = np.array([per_seed[s][user][what][m] for s in per_seed])
                out[user][what][m] = [round(float(vals.mean()), 4), round(float(vals.std()), 4)]
    return out


def run(data: Path, train_frac: float, seed: int, json_out: Path | None, cache_dir: Path,
        model_path: str = "", settings: HeadSettings = DEFAULT_SETTINGS, *,
        threads: int = 2, seeds: int = 1, methods: tuple[str, ...] = DEFAULT_METHODS,
        recipe: dict | None = None, cached_only: bool = False) -> dict:
    """Evaluate over seeds seed..seed+seeds-1, print a table, optionally write JSON.

    Returns {"summary": {user: ...}, "per_seed": {seed: {user: ...}}, "seconds": ...}.
    """
    start = time.perf_counter()
    pairs = read_pairs(data)
    recipe = recipe or {}
    if cached_only:
        pairs = cached_pairs_only(pairs, Path(cache_dir), model_path, **recipe)
    C, R = pair_features(pairs, Path(cache_dir), model_path, threads, **recipe)
    after_features = time.perf_counter()
    per_seed = {s: evaluate(C, R, split_users(pairs, train_frac, s), settings, methods, s)
                for s in range(seed, seed + seeds)}
    done = time.perf_counter()
    seconds = {"features": round(after_features - start, 2),
               "fitting": round(done - after_features, 2), "total": round(done - start, 2)}
    result = {"data": str(data), "pairs": len(pairs), "seeds": list(per_seed),
              "methods": list(methods), "recipe": recipe or "default",
              "summary": summarize(per_seed), "per_seed": per_seed, "seconds": seconds}
    print(format_table(result))
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=1) + "\n")
    return result


def cached_pairs_only(pairs: list[Pair], cache_dir: Path, model_path: str,
                      **recipe) -> list[Pair]:
    """The pairs whose both answers are already in the disk feature cache."""
    from adapters.base_model import load_tokenizer, resolve_source
    from adapters.feature_cache import DiskFeatureCache
    from adapters.features import feature_spec, template_text

    tokenizer = load_tokenizer(model_path, cache_dir)
    spec = feature_spec(recipe.get("layers"), recipe.get("max_tokens"), recipe.get("pools"),
                        recipe.get("answer_tokens"))
    cache = DiskFeatureCache(cache_dir / FEATURES_SUBDIR,
                             resolve_source(model_path, cache_dir).base_id, spec)
    kept = [p for p in pairs
            if all(cache.key(template_text(tokenizer, p.prompt, a)[1]) in cache.vectors
                   for a in (p.chosen, p.rejected))]
    if not kept:
        raise BadRequest("no pair of this file has cached features yet")
    return kept


def format_table(result: dict) -> str:
    methods = result["methods"]
    n = len(result["seeds"])
    head = f"{'user':<16} {'n_train':>7} {'n_test':>6} " + " ".join(
        f"{m:>21}" for m in methods)
    rows = [f"accuracy mean +- std over {n} seed(s) [ECE, 10 bins]", head, "-" * len(head)]
    for user, r in result["summary"].items():
        cells = [f"{r['acc'][m][0]:.3f}+-{r['acc'][m][1]:.3f} [{r['ece'][m][0]:.3f}]"
                 for m in methods]
        rows.append(f"{user:<16} {r['n_train']:>7} {r['n_test']:>6} "
                    + " ".join(f"{c:>21}" for c in cells))
    s = result["seconds"]
    rows.append(f"pairs {result['pairs']}; seconds: features {s['features']:.1f}, "
                f"fitting {s['fitting']:.1f}, total {s['total']:.1f}")
    return "\n".join(rows)


def cmd_eval_reward(args: argparse.Namespace, config=None) -> None:
    """Entry point for `assistant eval reward` (config: assistant.config.Config or None)."""
    if config is None:
        from assistant.config import load_config

        config = load_config(getattr(args, "config", None))
    settings = config.reward
    if args.seeds < 1:
        raise BadRequest(f"--seeds must be at least 1, got {args.seeds}")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    run(Path(args.data), args.train_frac, args.seed, Path(args.json) if args.json else None,
        Path(args.cache_dir) if args.cache_dir else config.cache_dir,
        config.model.path if args.model_path is None else args.model_path, settings,
        threads=config.model.threads or 2, seeds=args.seeds, methods=methods,
        recipe=_recipe(args), cached_only=args.cached_only)


def _recipe(args: argparse.Namespace) -> dict:
    """Feature recipe overrides from the command line (absent: the product's recipe)."""
    recipe: dict = {}
    if args.layers:
        recipe["layers"] = tuple(float(x) for x in args.layers.split(","))
    if args.pools:
        recipe["pools"] = tuple(args.pools.split(","))
    if args.max_tokens:
        recipe.update(max_tokens=args.max_tokens, answer_tokens=args.answer_tokens)
    return recipe


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `eval reward` under the top-level subparsers (reusing an `eval` group)."""
    group = _eval_group(subparsers)
    p = group.add_parser("reward", help="held-out accuracy of global vs personal reward heads")
    p.add_argument("--data", required=True, help="JSONL of {user, prompt, chosen, rejected}")
    p.add_argument("--train-frac", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0, help="first split seed")
    p.add_argument("--seeds", type=int, default=1,
                   help="number of split seeds (seed, seed+1, ...): mean and std over them")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated heads to compare, of {','.join(METHODS)}")
    p.add_argument("--layers", help="feature layers as depth fractions (default: product's)")
    p.add_argument("--pools", help="feature pools (default: product's)")
    p.add_argument("--max-tokens", type=int, help="feature token budget (default: product's)")
    p.add_argument("--answer-tokens", type=int, help="answer share of --max-tokens")
    p.add_argument("--cached-only", action="store_true",
                   help="evaluate only the pairs whose features are cached (no forward)")
    p.add_argument("--json", help="write the result as JSON here")
    p.add_argument("--cache-dir", help="model and feature cache (default: config cache_dir)")
    p.add_argument("--model-path", default=None, help="base model (default: config model.path)")
    p.set_defaults(func=cmd_eval_reward)
    return p


def _eval_group(subparsers):
    """The `eval` command's own subparsers, created if no other module made it first."""
    existing = subparsers.choices.get("eval")
    if existing is None:
        existing = subparsers.add_parser("eval", help="offline evaluations")
        return existing.add_subparsers(dest="eval_what", required=True)
    return next(a for a in existing._actions if isinstance(a, argparse._SubParsersAction))
