"""A shared low-rank basis of reward directions with per-user weights.

Every user's reward is the consensus plus a mix of a few shared directions:

    r_u(x) = z(x) . (w0 + B u_u),     z = standardized features (D,), B: (D, r), u_u: (r,)

fitted on every user's pairs at once with the Bradley-Terry loss (LoRe, Bose et al. 2025,
"LoRe: Personalizing LLMs via Low-Rank Reward Modeling"; PAL, Chen et al. 2025, "PAL:
Sample-efficient personalized reward modeling for pluralistic alignment", a mixture of
shared prototypes). The penalty (||B||^2 + ||U||^2) / 2 is the variational form of a
nuclear-norm penalty on the (D, users) matrix B U^T (Srebro et al. 2005), so the data pick
the rank up to r. A new user, or one with few labels, fits only r numbers (fit_user_weights):
that is how a basis learned from many users gives a good head from a handful of labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from adapters.reward_head import STD_FLOOR, RewardHead
from feedback_store.errors import InvalidData

MAX_ITER = 300


@dataclass
class LowRankModel:
    mean: np.ndarray          # (D,)
    std: np.ndarray           # (D,) includes the 1/sqrt(D) scale, as RewardHead
    w0: np.ndarray            # (D,) the consensus direction
    basis: np.ndarray         # (D, r)
    weights: dict[str, np.ndarray] = field(default_factory=dict)   # user -> (r,)

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def head(self, user_weights: np.ndarray | None) -> RewardHead:
        """The RewardHead of one weight vector (None: the consensus w0 alone)."""
        w = self.w0 if user_weights is None else self.w0 + self.basis @ user_weights
        return RewardHead(w=w.copy(), b=0.0, mean=self.mean, std=self.std,
                          metrics={"lowrank": self.rank})

    def user_head(self, user: str) -> RewardHead:
        return self.head(self.weights.get(user))


def _standardizer(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return X.mean(0), np.maximum(X.std(0), STD_FLOOR) * math.sqrt(X.shape[1])


def fit_lowrank(data: dict[str, tuple[np.ndarray, np.ndarray]], rank: int = 4,
                l2_basis: float = 1.0, l2_w0: float = 1.0, seed: int = 0) -> LowRankModel:
    """Fit w0, B and every user's u on {user: (chosen (P, D), rejected (P, D))} jointly."""
    import torch

    users = [u for u, (C, _) in data.items() if len(C)]
    if not users or rank < 1:
        raise InvalidData("a low-rank basis needs rank >= 1 and at least one user with pairs")
    mean, std = _standardizer(np.concatenate([np.concatenate(data[u]) for u in users]))
    diffs = [torch.from_numpy((data[u][0] - data[u][1]) / std) for u in users]   # (P_u, D)
    dim = diffs[0].shape[1]
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    B = (0.01 * torch.randn(dim, rank, generator=gen, dtype=torch.float64)).requires_grad_()
    U = (0.01 * torch.randn(len(users), rank, generator=gen, dtype=torch.float64)
         ).requires_grad_()
    opt = torch.optim.LBFGS([w0, B, U], lr=1.0, max_iter=MAX_ITER, tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = l2_w0 * (w0 ** 2).sum() + 0.5 * l2_basis * ((B ** 2).sum() + (U ** 2).sum())
        for i, d in enumerate(diffs):
            loss = loss + torch.nn.functional.softplus(-(d @ (w0 + B @ U[i]))).sum()
        loss.backward()
        return loss

    opt.step(closure)
    Un = U.detach().numpy()
    return LowRankModel(mean=mean, std=std, w0=w0.detach().numpy().copy(),
                        basis=B.detach().numpy().copy(),
                        weights={u: Un[i].copy() for i, u in enumerate(users)})


def fit_user_weights(model: LowRankModel, chosen: np.ndarray, rejected: np.ndarray,
                     l2: float = 1.0) -> RewardHead:
    """A user's head in the fixed basis: only the r weights are fitted (Bradley-Terry + L2
    toward 0, i.e. toward the consensus w0). Cheap and sample-efficient."""
    import torch

    if len(chosen) == 0:
        return model.head(None)
    Z = torch.from_numpy(((chosen - rejected) / model.std) @ model.basis)          # (P, r)
    base = torch.from_numpy(((chosen - rejected) / model.std) @ model.w0)          # (P,)
    u = torch.zeros(model.rank, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([u], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(base + Z @ u)).sum() + l2 * (u ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model.head(u.detach().numpy().copy())
