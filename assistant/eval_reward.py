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

import numpy as np

from adapters.reward_head import HeadSettings, fit_head, pair_accuracy
from feedback_store.errors import BadRequest

FEATURES_SUBDIR = "features"
DEFAULT_SETTINGS = HeadSettings()


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
                  threads: int = 2) -> tuple:
    """(chosen (N, D), rejected (N, D)) from the frozen base, through the disk cache."""
    import torch

    from adapters.base_model import load_base, load_tokenizer, resolve_source
    from adapters.features import disk_cached_features

    # Two threads on the 2-core target; on a busy machine 1 avoids spinning threads.
    torch.set_num_threads(max(1, threads))
    base_id = resolve_source(model_path, cache_dir).base_id
    items = [(p.prompt, a) for p in pairs for a in (p.chosen, p.rejected)]
    X = disk_cached_features(lambda: load_base(model_path, cache_dir).model,
                             load_tokenizer(model_path, cache_dir), base_id, items,
                             cache_dir / FEATURES_SUBDIR, progress=_progress)
    return X[0::2], X[1::2]


def _progress(done: int, total: int) -> None:
    print(f"  features: {done}/{total} new texts", flush=True)


def evaluate(C: np.ndarray, R: np.ndarray, splits: dict[str, tuple],
             settings: HeadSettings) -> dict[str, dict]:
    """Held-out accuracy per user for the global, personal and personal_prior heads."""
    empty = np.zeros((0, C.shape[1]))
    no_y = np.zeros(0)
    train_all = np.concatenate([tr for tr, _ in splits.values()])
    global_head = fit_head(C[train_all], R[train_all], empty, no_y,
                           replace(settings, shared_prior=False))
    alone = replace(settings, shared_prior=False)
    with_prior = replace(settings, shared_prior=True)
    users = {}
    for user, (tr, te) in splits.items():
        personal = fit_head(C[tr], R[tr], empty, no_y, alone)
        prior = fit_head(C[tr], R[tr], empty, no_y, with_prior, prior=global_head)
        users[user] = {name: round(pair_accuracy(head, C[te], R[te]), 4)
                       for name, head in (("global", global_head), ("personal", personal),
                                          ("personal_prior", prior))}
        users[user].update(n_train=int(len(tr)), n_test=int(len(te)))
    return users


def run(data: Path, train_frac: float, seed: int, json_out: Path | None, cache_dir: Path,
        model_path: str = "", settings: HeadSettings = DEFAULT_SETTINGS, *,
        threads: int = 2) -> dict:
    """Evaluate, print a table, optionally write JSON; returns {"users": ..., "seconds": ...}."""
    start = time.perf_counter()
    pairs = read_pairs(data)
    splits = split_users(pairs, train_frac, seed)
    C, R = pair_features(pairs, Path(cache_dir), model_path, threads)
    after_features = time.perf_counter()
    users = evaluate(C, R, splits, settings)
    done = time.perf_counter()
    seconds = {"features": round(after_features - start, 2),
               "fitting": round(done - after_features, 2), "total": round(done - start, 2)}
    result = {"users": users, "seconds": seconds}
    print(format_table(result))
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=1) + "\n")
    return result


def format_table(result: dict) -> str:
    head = f"{'user':<16} {'n_train':>7} {'n_test':>6} {'global':>7} {'personal':>8} " \
           f"{'pers+prior':>10}"
    rows = [head, "-" * len(head)]
    for user, r in result["users"].items():
        rows.append(f"{user:<16} {r['n_train']:>7} {r['n_test']:>6} {r['global']:>7.3f} "
                    f"{r['personal']:>8.3f} {r['personal_prior']:>10.3f}")
    s = result["seconds"]
    rows.append(f"seconds: features {s['features']:.1f}, fitting {s['fitting']:.1f}, "
                f"total {s['total']:.1f}")
    return "\n".join(rows)


def cmd_eval_reward(args: argparse.Namespace, config=None) -> None:
    """Entry point for `assistant eval reward` (config: assistant.config.Config or None)."""
    if config is None:
        from assistant.config import load_config

        config = load_config(getattr(args, "config", None))
    settings = HeadSettings(**vars(config.reward))
    run(Path(args.data), args.train_frac, args.seed, Path(args.json) if args.json else None,
        Path(args.cache_dir) if args.cache_dir else config.cache_dir,
        config.model.path if args.model_path is None else args.model_path, settings,
        threads=config.model.threads or 2)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `eval reward` under the top-level subparsers (reusing an `eval` group)."""
    group = _eval_group(subparsers)
    p = group.add_parser("reward", help="held-out accuracy of global vs personal reward heads")
    p.add_argument("--data", required=True, help="JSONL of {user, prompt, chosen, rejected}")
    p.add_argument("--train-frac", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
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
