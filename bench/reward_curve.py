"""Sample-efficiency curves of reward heads: accuracy at 10, 20, 40, 80, 160 labels per user.

Usage: OMP_NUM_THREADS=1 .venv/bin/python -m bench.reward_curve \
    [--seeds 5] [--recipe "L16 mean+seq"] [--sizes 10,20,40,80,160] [--population-users 30]

Two populations, the same methods and seeds:
- relabeled HH (two real users who judge helpfulness or harmlessness): each user's pairs
  are split in half (eval reward's split); every user gets the first n training pairs;
  accuracy on the user's test half;
- a simulated population: users mixed from a few taste directions (Dirichlet weights over
  4 random directions in the span of the features' top principal components) label real
  cached answer pairs with Bradley-Terry noise. 3/4 of the users ("existing") have 160
  labels each; the curve is for the other, "new" users with n labels, tested on 300 pairs.

Methods: global (one head on every user's n labels), personal (own n labels), personal+prior
(fixed strength toward global, as shipped so far), selected (per-user CV choice of prior and
strength toward the other users' consensus, adapters/head_selection.py), evidence (the same
grid, chosen by Laplace evidence), and on the
population lowrank (a shared basis fitted on the existing users, only the new user's r
weights fitted, adapters/lowrank.py). Writes bench/out/reward_curve.json and .png.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from adapters.calibration import sigmoid
from adapters.head_selection import fit_evidence_head, fit_selected_head
from adapters.lowrank import fit_lowrank, fit_user_weights
from adapters.reward_head import HeadSettings, RewardHead, fit_head
from assistant.eval_reward import split_users
from bench.reward_common import HH, RECIPES, RELABELED, ROOT, cut, rich_pairs

SETTINGS = HeadSettings()
PLAIN = replace(SETTINGS, shared_prior=False)
CURVE_METHODS = ("global", "personal", "personal_prior", "selected", "evidence")
OUT = ROOT / "bench" / "out"


def _acc(head, C, R) -> float:
    m = head.score(C) - head.score(R)
    return float(np.mean((m > 0) + 0.5 * (m == 0)))


def _none(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """No thumbs: an empty (0, dim) feature matrix and its empty labels."""
    return np.zeros((0, dim)), np.zeros(0)


def _pooled(data: dict[str, tuple], users) -> RewardHead:
    """A plain head on the pooled pairs of `users` (the global head, or a prior)."""
    C = np.concatenate([data[u][0] for u in users])
    R = np.concatenate([data[u][1] for u in users])
    return fit_head(C, R, *_none(C.shape[1]), PLAIN)


def _add_user_heads(out: dict, user: str, C, R, glob, prior, seed: int) -> None:
    """The user's head under every CURVE_METHODS: global, own, own anchored on glob, and
    the CV- and evidence-selected prior strength toward `prior`."""
    dim = C.shape[1]
    out["global"][user] = glob
    out["personal"][user] = fit_head(C, R, *_none(dim), PLAIN)
    out["personal_prior"][user] = fit_head(C, R, *_none(dim), SETTINGS, prior=glob)
    out["selected"][user] = fit_selected_head(C, R, *_none(dim), SETTINGS, prior,
                                              seed=seed).head
    out["evidence"][user] = fit_evidence_head(C, R, *_none(dim), SETTINGS, prior).head


def heads_for(train: dict[str, tuple], seed: int) -> dict[str, dict]:
    """{method: {user: head}} for users' training pairs {user: (C, R)}."""
    glob = _pooled(train, train)
    out: dict[str, dict] = {m: {} for m in CURVE_METHODS}
    for user, (C, R) in train.items():
        others = [u for u in train if u != user]
        prior = _pooled(train, others) if others else None
        _add_user_heads(out, user, C, R, glob, prior, seed)
    return out


def relabeled_curve(C, R, pairs, sizes, seeds) -> dict:
    """{method: {user: {n: [acc per seed]}}} on relabeled HH."""
    res: dict = {}
    for seed in range(seeds):
        splits = split_users(pairs, 0.5, seed)
        for n in sizes:
            train = {u: (C[tr[:n]], R[tr[:n]]) for u, (tr, _) in splits.items()}
            heads = heads_for(train, seed)
            for m, per_user in heads.items():
                for u, head in per_user.items():
                    te = splits[u][1]
                    res.setdefault(m, {}).setdefault(u, {}).setdefault(n, []).append(
                        _acc(head, C[te], R[te]))
            print(f"relabeled seed {seed} n {n}: " + " ".join(
                f"{m}={np.mean([res[m][u][n][-1] for u in splits]):.3f}" for m in heads),
                flush=True)
    return res


def simulated_population(C, R, users: int, seed: int, directions: int = 4,
                         pcs: int = 32, beta: float = 3.0):
    """Taste weights (users, D) in the standardized space, and the standardizer."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([C, R])
    mean, std = X.mean(0), np.maximum(X.std(0), 1e-6)
    Z = (X - mean) / std
    _, _, Vt = np.linalg.svd(Z[rng.permutation(len(Z))[:2000]], full_matrices=False)
    dirs = rng.normal(size=(directions, pcs)) @ Vt[:pcs]            # (K, D)
    dirs /= np.linalg.norm((C - R) / std @ dirs.T, axis=0)[:, None] / np.sqrt(len(C))
    mixes = rng.dirichlet(np.full(directions, 0.5), size=users)      # (U, K)
    return beta * mixes @ dirs, mean, std


def _labels(rng, W_u, C, R, std, idx):
    """Bradley-Terry labels of pairs idx for a user with weights W_u: (chosen, rejected)."""
    A, B = C[idx], R[idx]
    a_wins = rng.random(len(idx)) < sigmoid(((A - B) / std) @ W_u)
    return np.where(a_wins[:, None], A, B), np.where(a_wins[:, None], B, A)


def population_curve(C, R, sizes, seeds, n_users: int) -> dict:
    res: dict = {}
    for seed in range(seeds):
        rng = np.random.default_rng(100 + seed)
        W, _, std = simulated_population(C, R, n_users, seed)
        n_old = (3 * n_users) // 4
        data = {}
        for u in range(n_users):
            idx = rng.permutation(len(C))
            data[f"u{u}"] = (_labels(rng, W[u], C, R, std, idx[:max(sizes)]),
                             _labels(rng, W[u], C, R, std, idx[max(sizes):max(sizes) + 300]))
        old = {f"u{u}": data[f"u{u}"][0] for u in range(n_old)}
        basis = fit_lowrank(old, rank=4, seed=seed)
        for n in sizes:
            new = {u: (d[0][0][:n], d[0][1][:n]) for u, d in data.items()
                   if int(u[1:]) >= n_old}
            heads = _new_user_heads(old, new, seed)
            heads["lowrank"] = {u: fit_user_weights(basis, *new[u]) for u in new}
            for m, per_user in heads.items():
                accs = [_acc(h, *data[u][1]) for u, h in per_user.items()]
                res.setdefault(m, {}).setdefault(n, []).append(float(np.mean(accs)))
            print(f"population seed {seed} n {n}: " + " ".join(
                f"{m}={res[m][n][-1]:.3f}" for m in heads), flush=True)
    return res


def _new_user_heads(old: dict, new: dict, seed: int) -> dict:
    """Heads of new users: global/prior from the existing users' data plus the new user's."""
    consensus = _pooled(old, old)
    out: dict = {m: {} for m in CURVE_METHODS}
    for u, (C, R) in new.items():
        _add_user_heads(out, u, C, R, consensus, consensus, seed)
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"relabeled HH: {u}", {m: result["relabeled"][m][u]
                                      for m in result["relabeled"]})
              for u in next(iter(result["relabeled"].values()))]
    panels.append(("simulated population (new users)", result["population"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels, strict=True):
        for m, by_n in curves.items():
            ns = sorted(by_n, key=int)
            ax.errorbar([int(n) for n in ns], [np.mean(by_n[n]) for n in ns],
                        yerr=[np.std(by_n[n]) for n in ns], label=m, marker="o", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel("labels per user")
        ax.set_ylabel("held-out pair accuracy")
        ax.grid(alpha=0.3)
    for ax in axes[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(result: dict, sizes) -> str:
    rows = ["| population | method | " + " | ".join(str(n) for n in sizes) + " |",
            "| --- | --- | " + " | ".join("---" for _ in sizes) + " |"]
    for m, per_user in result["relabeled"].items():
        for u, by_n in per_user.items():
            rows.append(f"| relabeled {u} | {m} | " + " | ".join(
                f"{np.mean(by_n[n]):.3f}" for n in sizes) + " |")
    for m, by_n in result["population"].items():
        rows.append(f"| simulated (new users) | {m} | " + " | ".join(
            f"{np.mean(by_n[n]):.3f}" for n in sizes) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--population-seeds", type=int, default=2)
    ap.add_argument("--recipe", default="L16 mean+seq")
    ap.add_argument("--sizes", default="10,20,40,80,160")
    ap.add_argument("--population-users", type=int, default=24)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    layers, pools = RECIPES[args.recipe]
    pairs, C, R = rich_pairs(RELABELED)
    C, R = cut(C, layers, pools), cut(R, layers, pools)
    result = {"recipe": args.recipe, "sizes": sizes, "relabeled_pairs": len(pairs),
              "relabeled": relabeled_curve(C, R, pairs, sizes, args.seeds)}
    _, Ch, Rh = rich_pairs(HH)
    pool_C = np.concatenate([C, cut(Ch, layers, pools)])
    pool_R = np.concatenate([R, cut(Rh, layers, pools)])
    result["population"] = population_curve(pool_C, pool_R, sizes, args.population_seeds,
                                            args.population_users)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "reward_curve.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, OUT / "reward_curve.png")
    print(table(result, sizes))


if __name__ == "__main__":
    main()
