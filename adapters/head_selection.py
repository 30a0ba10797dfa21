"""Per-user choice of how strongly to trust the shared prior, and calibrated margins.

A fixed prior strength helps a user who agrees with the consensus and costs one who does
not (relabeled HH: the helpfulness user lost a point to it). Here each user's head is
fitted on a small grid of (how much of the prior to aim at, how hard to pull):

    min_w  sum BT(w) + thumbs + lam * ||w - alpha * w_prior||^2,

alpha in ALPHAS (0 = the user's own head with plain L2, 1 = the usual shared prior) and
lam in STRENGTHS, and the pair with the lowest k-fold cross-validated log loss on the
user's own pairs wins (after temperature scaling, so the choice is about ranking and
shape, not margin scale). The out-of-fold margins of the winner then fit the temperature
(adapters/calibration.py) by which the final head's weights are divided, so sigmoid of
its margins is a usable probability. This is cross-validated model selection; the
grid's alpha = 0 row guarantees a departing user can drop the prior entirely.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from adapters.calibration import fit_temperature, sigmoid
from adapters.reward_head import STD_FLOOR, RewardHead, _optimize, fit_head
from adapters.settings import HeadSettings
from feedback_store.errors import InvalidData

ALPHAS = (0.0, 0.5, 1.0)
STRENGTHS = (0.3, 1.0, 3.0, 10.0, 30.0)
CV_FOLDS = 3
MIN_PAIRS_TO_SELECT = 8
# L-BFGS iterations per warm-started fit along the path (the final fit runs to the end).
PATH_ITER = 40


@dataclass(frozen=True)
class Selection:
    """Grid, folds and the fallback used when a user has too few pairs to cross-validate."""

    alphas: tuple[float, ...] = ALPHAS
    strengths: tuple[float, ...] = STRENGTHS
    folds: int = CV_FOLDS
    min_pairs: int = MIN_PAIRS_TO_SELECT
    calibrate: bool = True


@dataclass
class SelectedHead:
    head: RewardHead
    alpha: float
    strength: float
    temperature: float
    cv_log_loss: dict = field(default_factory=dict)   # "alpha,strength" -> loss


def _anchor(prior: RewardHead | None, alpha: float, C, R, T) -> RewardHead:
    """The head the penalty pulls toward: alpha * prior in the prior's standardization, or
    zero in the data's own standardization when there is no prior."""
    if prior is not None:
        return RewardHead(alpha * prior.w, alpha * prior.b, prior.mean, prior.std)
    X = np.concatenate([a for a in (C, R, T) if len(a)])
    std = np.maximum(X.std(0), STD_FLOOR) * np.sqrt(X.shape[1])
    return RewardHead(np.zeros(X.shape[1]), 0.0, X.mean(0), std)


def _fit(C, R, T, y, base: HeadSettings, anchor: RewardHead, strength: float) -> RewardHead:
    settings = replace(base, shared_prior=True, prior_strength=strength)
    return fit_head(C, R, T, y, settings, anchor)


def _log_loss(margins: np.ndarray) -> float:
    t = fit_temperature(margins)
    return float(np.logaddexp(0.0, -margins / t).mean())


def _oof_path(D: np.ndarray, Tz: np.ndarray, y: np.ndarray, thumbs_weight: float,
              anchor: RewardHead, strengths: tuple[float, ...], folds,
              probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold margins (len(strengths), P) of standardized pair differences D (P, D),
    and each strength's mean RMS margin on `probe` differences over the fold models.

    Within a fold the strengths run from strongest to weakest pull, each fit warm-started
    from the previous one (a regularization path): a few L-BFGS steps each, not hundreds.
    """
    margins = np.zeros((len(strengths), len(D)))
    scale = np.zeros(len(strengths))
    order = np.argsort(strengths)[::-1]
    for fold in folds:
        train = np.setdiff1d(np.arange(len(D)), fold)
        init = None
        for i in order:
            w, b = _optimize(D[train], Tz, y, thumbs_weight, strengths[i], anchor.w, anchor.b,
                             init=init, max_iter=PATH_ITER)
            init = (w, b)
            margins[i, fold] = D[fold] @ w
            scale[i] += _rms(probe @ w) / len(folds)
    return margins, scale


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2))) if x.size else 0.0


def fit_selected_head(C: np.ndarray, R: np.ndarray, T: np.ndarray, y: np.ndarray,
                      base: HeadSettings, prior: RewardHead | None,
                      selection: Selection = Selection(), seed: int = 0) -> SelectedHead:
    """The head at the grid point with the best CV log loss, divided by its CV temperature.

    Pairs (P, D) x 2 are cross-validated; thumbs (T, D) always train. With fewer than
    selection.min_pairs pairs the settings' own choice (prior_strength toward the prior,
    or l2) is used uncalibrated.
    """
    C, R = np.asarray(C, dtype=np.float64), np.asarray(R, dtype=np.float64)
    T, y = np.asarray(T, dtype=np.float64), np.asarray(y, dtype=np.float64).reshape(-1)
    alphas = selection.alphas if prior is not None else (0.0,)
    if len(C) < selection.min_pairs:
        use_prior = prior is not None and base.shared_prior
        head = fit_head(C, R, T, y, base, prior)
        return SelectedHead(head, 1.0 if use_prior else 0.0,
                            base.prior_strength if use_prior else base.l2, 1.0)
    rng = np.random.default_rng(seed)
    folds = np.array_split(rng.permutation(len(C)), selection.folds)
    # Probe pairs: chosen of one pair against rejected of another, never a training pair,
    # to compare margin scales of the fold models and the final model.
    probe_raw = C[rng.permutation(len(C))] - R
    losses, oof, scales = {}, {}, {}
    for alpha in alphas:
        anchor = _anchor(prior, alpha, C, R, T)
        D, Tz = (C - R) / anchor.std, (T - anchor.mean) / anchor.std
        path, scale = _oof_path(D, Tz, y, base.thumbs_weight, anchor, selection.strengths,
                                folds, probe_raw / anchor.std)
        for lam, m, sc in zip(selection.strengths, path, scale, strict=True):
            losses[(alpha, lam)], oof[(alpha, lam)] = _log_loss(m), m
            scales[(alpha, lam)] = sc
    alpha, lam = min(losses, key=losses.__getitem__)
    anchor = _anchor(prior, alpha, C, R, T)
    head = _fit(C, R, T, y, base, anchor, lam)
    temperature = 1.0
    if selection.calibrate:
        # The OOF temperature is that of models fitted on (k-1)/k of the pairs; the final
        # model, fitted on all of them, has larger margins: scale T by the ratio of RMS
        # margins on the probe pairs (final / fold models).
        ratio = _rms((probe_raw / anchor.std) @ head.w) / max(scales[(alpha, lam)], 1e-12)
        temperature = fit_temperature(oof[(alpha, lam)]) * ratio
    head.w, head.b = head.w / temperature, head.b / temperature
    head.metrics = {**head.metrics, "prior": prior is not None and alpha > 0,
                    "alpha": alpha, "strength": lam,
                    "temperature": temperature}
    return SelectedHead(head, alpha, lam, temperature,
                        {f"{a},{s}": round(v, 5) for (a, s), v in losses.items()})


# ---- empirical Bayes: the grid point with the largest Laplace evidence ----------------

def log_evidence(D: np.ndarray, Tz: np.ndarray, y: np.ndarray, thumbs_weight: float,
                 strength: float, w: np.ndarray, b: float, target_w: np.ndarray) -> float:
    """Laplace approximation of log p(data | prior) for the fitted head w (MacKay 1992).

    The penalty strength * ||w - target||^2 is the Gaussian prior N(target, I / (2 strength));
    with the data term E_data (Bradley-Terry on D (P, dim), logistic on thumbs Tz (T, dim))
    and its Hessian X^T S X at w,

        log p ~ -E_data(w) - strength ||w - target||^2 - 1/2 log det(I + X^T S X / (2 strength)),

    computed through the (P + T) x (P + T) matrix I + S^1/2 X X^T S^1/2 / (2 strength), which
    is small next to the feature width. The bias is left out (it has its own tiny pull).
    """
    m = D @ w
    p = sigmoid(m)
    data = float(np.logaddexp(0.0, -m).sum())
    rows, curv = [D], [p * (1 - p)]
    if len(Tz):
        z = Tz @ w + b
        q = sigmoid(z)
        data += thumbs_weight * float((np.logaddexp(0.0, z) - y * z).sum())
        rows.append(Tz)
        curv.append(thumbs_weight * q * (1 - q))
    X, s = np.concatenate(rows), np.sqrt(np.concatenate(curv))
    Xs = X * s[:, None]
    _, logdet = np.linalg.slogdet(np.eye(len(X)) + Xs @ Xs.T / (2 * strength))
    return -data - strength * float(((w - target_w) ** 2).sum()) - 0.5 * float(logdet)


def fit_evidence_head(C: np.ndarray, R: np.ndarray, T: np.ndarray, y: np.ndarray,
                      base: HeadSettings, prior: RewardHead | None,
                      selection: Selection = Selection()) -> SelectedHead:
    """The head at the (alpha, strength) grid point with the largest Laplace evidence.

    Empirical Bayes instead of cross-validation: one fit per grid point on all the pairs
    (warm-started along each alpha's path, strongest pull first), no folds, so the choice
    does not depend on a fold split and costs a third of the CV's fits. The head is not
    temperature-scaled: under the chosen prior its margins are already the posterior mode's.
    """
    C, R = np.asarray(C, dtype=np.float64), np.asarray(R, dtype=np.float64)
    T, y = np.asarray(T, dtype=np.float64), np.asarray(y, dtype=np.float64).reshape(-1)
    if len(C) + len(T) == 0:
        raise InvalidData("a reward head needs at least one pair or one thumb")
    alphas = selection.alphas if prior is not None else (0.0,)
    best: tuple[float, float, float, RewardHead] | None = None
    evidence = {}
    for alpha in alphas:
        anchor = _anchor(prior, alpha, C, R, T)
        D, Tz = (C - R) / anchor.std, (T - anchor.mean) / anchor.std
        init = None
        for lam in sorted(selection.strengths, reverse=True):
            w, b = _optimize(D, Tz, y, base.thumbs_weight, lam, anchor.w, anchor.b, init=init)
            init = (w, b)
            ev = log_evidence(D, Tz, y, base.thumbs_weight, lam, w, b, anchor.w)
            evidence[(alpha, lam)] = ev
            if best is None or ev > best[0]:
                head = RewardHead(w=w, b=b, mean=anchor.mean, std=anchor.std)
                best = (ev, alpha, lam, head)
    assert best is not None
    _, alpha, lam, head = best
    head.metrics = {"n_pairs": int(len(C)), "n_thumbs": int(len(T)),
                    "prior": prior is not None and alpha > 0, "alpha": alpha,
                    "strength": lam, "selection": "evidence"}
    return SelectedHead(head, alpha, lam, 1.0,
                        {f"{a},{s}": round(-v, 3) for (a, s), v in evidence.items()})
