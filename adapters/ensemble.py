"""A bootstrap ensemble of reward heads: a reward and an uncertainty for every answer.

Exploration (choosing which candidates to show, e.g. double Thompson sampling, Dwaracherla
et al. 2024, "Efficient Exploration for LLMs"; active preference learning, Muldrew et al.
2024) needs to know where the head is unsure. K linear heads are fitted on bootstrap
resamples of the user's pairs and thumbs (Efron 1979; the bootstrapped-DQN recipe of
Osband et al. 2016): their spread approximates the posterior spread of the reward, and it
shrinks as the user labels more. Member 0 is the full-data fit, so `members[0]` is the
same head fit_head would give.

Every member is fitted with the same settings and prior (adapters/reward_head.py), so an
ensemble of a user with few labels stays near the shared prior and is unsure only where
the user's own data could move it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from adapters.calibration import sigmoid
from adapters.reward_head import RewardHead, fit_head
from adapters.settings import HeadSettings
from feedback_store.errors import InvalidData, NotFound

MAX_MEMBERS = 64
DEFAULT_SETTINGS = HeadSettings()


@dataclass
class EnsembleHead:
    members: list[RewardHead]          # K heads of the same width D; members[0]: full data

    def __post_init__(self) -> None:
        if not self.members:
            raise InvalidData("an ensemble needs at least one head")
        if len({m.dim for m in self.members}) != 1:
            raise InvalidData("ensemble members must share one feature width")

    @property
    def dim(self) -> int:
        return self.members[0].dim

    def scores(self, X: np.ndarray) -> np.ndarray:
        """(K, N) each member's reward for features (N, D)."""
        return np.stack([m.score(X) for m in self.members])

    def score(self, X: np.ndarray) -> np.ndarray:
        """(N,) mean reward over members."""
        return self.scores(X).mean(0)

    def uncertainty(self, X: np.ndarray) -> np.ndarray:
        """(N,) standard deviation of the reward across members (0 for a single member)."""
        return self.scores(X).std(0)

    def margin_uncertainty(self, Xa: np.ndarray, Xb: np.ndarray) -> np.ndarray:
        """(N,) std across members of r(a) - r(b): how unsure the ensemble is which of two
        answers is better (the bias, shared by both answers, cancels)."""
        return (self.scores(Xa) - self.scores(Xb)).std(0)

    def prob_prefers(self, Xa: np.ndarray, Xb: np.ndarray) -> np.ndarray:
        """(N,) mean over members of sigmoid(r(a) - r(b)): P(a preferred to b)."""
        return sigmoid(self.scores(Xa) - self.scores(Xb)).mean(0)

    def save(self, folder: Path) -> None:
        """folder/ensemble.json and folder/<i>/ per member (RewardHead.save)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(self.members):
            m.save(folder / str(i))
        (folder / "ensemble.json").write_text(json.dumps({"k": len(self.members),
                                                          "dim": self.dim}))

    @classmethod
    def load(cls, folder: Path) -> EnsembleHead:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "ensemble.json").read_text())
        except FileNotFoundError as exc:
            raise NotFound(f"no reward ensemble in {folder}") from exc
        return cls([RewardHead.load(folder / str(i)) for i in range(int(meta["k"]))])


def _resample(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, n, size=n) if n else np.zeros(0, dtype=int)


def fit_ensemble(pairs_chosen: np.ndarray, pairs_rejected: np.ndarray, thumbs_x: np.ndarray,
                 thumbs_y: np.ndarray, settings: HeadSettings = DEFAULT_SETTINGS,
                 prior: RewardHead | None = None, k: int = 8, seed: int = 0) -> EnsembleHead:
    """K heads: member 0 on all data, members 1..K-1 on bootstrap resamples (with
    replacement, pairs and thumbs resampled separately, same sizes as the data)."""
    if not 1 <= k <= MAX_MEMBERS:
        raise InvalidData(f"ensemble size must be in [1, {MAX_MEMBERS}], got {k}")
    C, R = np.asarray(pairs_chosen), np.asarray(pairs_rejected)
    T, y = np.asarray(thumbs_x), np.asarray(thumbs_y).reshape(-1)
    first = fit_head(C, R, T, y, settings, prior)
    members = [first]
    # Without a prior every member is pulled toward 0 in member 0's standardization: a
    # zero head with that standardization is the same L2 penalty, and the members then
    # differ only by their data, not by the mean/std of their resample.
    use_prior = settings.shared_prior and prior is not None
    anchor = prior if use_prior else RewardHead(np.zeros(first.dim), 0.0, first.mean,
                                                first.std)
    anchored = replace(settings, shared_prior=True,
                       prior_strength=settings.prior_strength if use_prior else settings.l2)
    rng = np.random.default_rng(seed)
    for _ in range(k - 1):
        p, t = _resample(rng, len(C)), _resample(rng, len(T))
        head = fit_head(C[p] if len(C) else C, R[p] if len(R) else R,
                        T[t] if len(T) else T, y[t] if len(y) else y, anchored, anchor)
        head.metrics = {**head.metrics, "prior": use_prior, "bootstrap": True}
        members.append(head)
    return EnsembleHead(members)
