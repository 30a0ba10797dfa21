"""Per-user reward heads: a linear scorer r(x) = w.x + b on standardized frozen features.

Training signal, all in one convex objective (full-batch L-BFGS, seconds for 1,000 events):
- preference pairs with the Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected)), the
  reward-model objective of Christiano et al. 2017 ("Deep RL from human preferences") and
  Ouyang et al. 2022 (InstructGPT);
- single thumbs with a logistic loss on r (up = 1, down = 0), each weighted by
  `thumbs_weight` relative to a pair, in the spirit of KTO's desirable/undesirable weights
  (Ethayarajh et al. 2024), so a user's thumbs and comparisons both count;
- a shared prior: a global head fitted on every user's data, and each user's head pulled
  toward it with prior_strength * ||w - w_global||^2. With few events a user's head stays
  near the consensus; with many the data term (a sum over events) outweighs the pull.

Features are standardized, then scaled by 1/sqrt(D) so that a standardized vector has unit
expected norm: the penalties then mean the same thing whatever the feature width D.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adapters.settings import HeadSettings
from feedback_store.clock import now
from feedback_store.errors import InvalidData, NotFound

MAX_ITER = 200
STD_FLOOR = 1e-6


@dataclass
class RewardHead:
    """r(x) = ((x - mean) / (std * sqrt(D))) . w + b, for features x of width D."""

    w: np.ndarray            # (D,)
    b: float
    mean: np.ndarray         # (D,)
    std: np.ndarray          # (D,) already includes the 1/sqrt(D) scale
    metrics: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.w.size)

    def standardize(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise InvalidData(f"features must have shape (N, {self.dim}), got {X.shape}")
        return (X - self.mean) / self.std

    def score(self, X: np.ndarray) -> np.ndarray:
        """Rewards (N,) for features (N, D)."""
        return self.standardize(X) @ self.w + self.b

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "head.npz", w=self.w, b=np.array([self.b]), mean=self.mean,
                 std=self.std)
        (folder / "meta.json").write_text(json.dumps(
            {"dim": self.dim, "metrics": self.metrics}, indent=1, default=float))

    @classmethod
    def load(cls, folder: Path) -> RewardHead:
        folder = Path(folder)
        try:
            with np.load(folder / "head.npz") as data:
                arrays = {k: data[k] for k in ("w", "b", "mean", "std")}
            meta = json.loads((folder / "meta.json").read_text())
        except FileNotFoundError as exc:
            raise NotFound(f"no reward head in {folder}") from exc
        return cls(w=arrays["w"], b=float(arrays["b"][0]), mean=arrays["mean"],
                   std=arrays["std"], metrics=meta.get("metrics", {}))


def _as_matrix(X: np.ndarray, dim: int | None) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.size == 0:
        return np.zeros((0, dim or 0))
    if X.ndim != 2:
        raise InvalidData(f"features must be 2-D, got shape {X.shape}")
    return X


def _standardizer(blocks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (times sqrt(D)) over every vector the head is fitted on."""
    X = np.concatenate([b for b in blocks if len(b)])
    std = np.maximum(X.std(0), STD_FLOOR) * math.sqrt(X.shape[1])
    return X.mean(0), std


def fit_head(pairs_chosen: np.ndarray, pairs_rejected: np.ndarray, thumbs_x: np.ndarray,
             thumbs_y: np.ndarray, settings: HeadSettings = HeadSettings(),
             prior: RewardHead | None = None) -> RewardHead:
    """Fit one head on pairs (P, D) x 2 and thumbs (T, D) with labels (T,) in {0, 1}.

    With settings.shared_prior and a prior head, the prior's standardization is reused and
    the weights are pulled toward it; otherwise they are pulled toward 0 with settings.l2.
    """
    dim = next((np.shape(a)[1] for a in (pairs_chosen, thumbs_x) if np.size(a)), None)
    if dim is None:
        raise InvalidData("a reward head needs at least one pair or one thumb")
    C, R = _as_matrix(pairs_chosen, dim), _as_matrix(pairs_rejected, dim)
    T, y = _as_matrix(thumbs_x, dim), np.asarray(thumbs_y, dtype=np.float64).reshape(-1)
    if C.shape != R.shape or len(T) != len(y):
        raise InvalidData("chosen/rejected and thumbs/labels must have matching lengths")
    anchor = prior if settings.shared_prior else None
    if anchor is not None and anchor.dim != dim:
        raise InvalidData(f"prior head has width {anchor.dim}, features have {dim}")
    if anchor is not None:
        mean, std, target_w, target_b = anchor.mean, anchor.std, anchor.w, anchor.b
        strength = settings.prior_strength
    else:
        (mean, std), target_w, target_b = _standardizer([C, R, T]), np.zeros(dim), 0.0
        strength = settings.l2
    w, b = _optimize((C - R) / std, (T - mean) / std, y, settings.thumbs_weight,
                     strength, target_w, target_b)
    n = {"n_pairs": int(len(C)), "n_thumbs": int(len(T)), "prior": anchor is not None}
    return RewardHead(w=w, b=b, mean=mean, std=std, metrics=n)


def _optimize(D: np.ndarray, T: np.ndarray, y: np.ndarray, thumbs_weight: float,
              strength: float, target_w: np.ndarray, target_b: float,
              init: tuple[np.ndarray, float] | None = None,
              max_iter: int = MAX_ITER) -> tuple[np.ndarray, float]:
    """Minimize sum BT(D) + thumbs_weight * sum logistic(T, y) + strength * ||w - target||^2.

    D: (P, D) standardized chosen - rejected differences (the bias cancels in a pair);
    T: (T, D) standardized thumbs. The bias is pulled to target_b with a small weight so
    that it stays defined when there are no thumbs. init: a warm start (w, b).
    """
    import torch

    Dt, Tt = torch.from_numpy(D), torch.from_numpy(T)
    yt, tw = torch.from_numpy(y), torch.from_numpy(target_w.astype(np.float64))
    w0, b0 = (target_w, target_b) if init is None else init
    w = torch.tensor(np.asarray(w0, dtype=np.float64)).requires_grad_(True)
    b = torch.tensor([float(b0)], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(Dt @ w)).sum()          # Bradley-Terry
        if len(Tt):
            logits = Tt @ w + b
            loss = loss + thumbs_weight * torch.nn.functional.binary_cross_entropy_with_logits(
                logits, yt, reduction="sum")
        loss = loss + strength * ((w - tw) ** 2).sum() + 1e-3 * ((b - target_b) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().copy(), float(b.detach()[0])


def pair_accuracy(head: RewardHead, chosen: np.ndarray, rejected: np.ndarray) -> float:
    """Share of pairs ranked correctly (ties count half)."""
    if len(chosen) == 0:
        return float("nan")
    margin = head.score(chosen) - head.score(rejected)
    return float(np.mean((margin > 0) + 0.5 * (margin == 0)))


def cross_val_accuracy(pairs_chosen: np.ndarray, pairs_rejected: np.ndarray,
                       thumbs_x: np.ndarray, thumbs_y: np.ndarray,
                       settings: HeadSettings = HeadSettings(),
                       prior: RewardHead | None = None, k: int = 5,
                       seed: int = 0) -> float | None:
    """k-fold pairwise accuracy on the user's own pairs (thumbs always train); None if < 2.

    A prior must not have been fitted on these pairs, or the estimate is optimistic: fit
    the global head without this user's events (or pass prior=None) for an honest figure.
    """
    n = len(pairs_chosen)
    if n < 2:
        return None
    folds = np.array_split(np.random.default_rng(seed).permutation(n), min(k, n))
    correct = 0.0
    for fold in folds:
        train = np.setdiff1d(np.arange(n), fold)
        head = fit_head(pairs_chosen[train], pairs_rejected[train], thumbs_x, thumbs_y,
                        settings, prior)
        correct += pair_accuracy(head, pairs_chosen[fold], pairs_rejected[fold]) * len(fold)
    return correct / n


def save_head_version(db, heads_dir: Path, user_id: int | None, head: RewardHead,
                      metrics: dict, base_id: str, published: bool = True) -> int:
    """Write the head to heads_dir/<version>/ atomically and record a reward_heads row
    (published now, or later by publish_head: a training run publishes only when it ends).

    The version is one past both the user's recorded versions and the folders present, so
    a shared heads_dir never has two heads in one folder.
    """
    heads_dir = Path(heads_dir)
    heads_dir.mkdir(parents=True, exist_ok=True)
    where = "user_id IS NULL" if user_id is None else "user_id = ?"
    args = [] if user_id is None else [user_id]
    last = db.execute(f"SELECT MAX(version) FROM reward_heads WHERE {where}", args).fetchone()
    on_disk = [int(p.name) for p in heads_dir.iterdir() if p.name.isdigit()]
    version = max([last[0] or 0, *on_disk]) + 1
    head.metrics = {**head.metrics, **metrics}
    tmp = Path(tempfile.mkdtemp(dir=heads_dir, prefix=".tmp-"))
    try:
        head.save(tmp)
        tmp.rename(heads_dir / str(version))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stamp = now()
    db["reward_heads"].insert({
        "user_id": user_id, "version": version, "path": str(heads_dir / str(version)),
        "base_id": base_id, "metrics": json.dumps(head.metrics, default=float),
        "created_at": stamp, "published_at": stamp if published else None})
    return version


def latest_published(db, user_id: int, features: str) -> dict | None:
    """The user's newest published head row for these features (`features_id(base_id)`)."""
    rows = list(db["reward_heads"].rows_where(      # list: no cursor left open
        "user_id = ? and base_id = ? and published_at is not null", [user_id, features],
        order_by="version desc", limit=1))
    return rows[0] if rows else None


def recorded_paths(db, user_id: int) -> list[str]:
    """Every non-empty path recorded for the user's heads (erasure removes them)."""
    return [r["path"] for r in db["reward_heads"].rows_where(
        "user_id = ? and path is not null and path != ''", [user_id])]


def publish_head(db, user_id: int, version: int) -> None:
    """Make a saved head version live (the newest published head is the user's head)."""
    db.execute("update reward_heads set published_at = ? where user_id = ? and version = ? "
               "and published_at is null", [now(), user_id, version])
