"""Calibration of pairwise preference probabilities.

A head's P(a preferred to b) = sigmoid(r(a) - r(b)) ranks pairs well long before its scale
is right: with few labels the L2 pull shrinks margins (under-confident), with many a
nearly separable fit inflates them (over-confident). Exploration and the gate read these
probabilities, so they are measured with expected calibration error (Naeini et al. 2015;
Guo et al. 2017) and fixed with temperature scaling (Guo et al. 2017): one scalar T with
P = sigmoid(margin / T), fitted on held-out margins.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 10
T_GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins of |accuracy - confidence| x bin share.

    p: (N,) predicted probability that the event holds; y: (N,) 1 if it did. Pairs are
    symmetric, so for P(chosen > rejected) every y is 1 and ECE reads how well the mean
    probability in each bin matches the share of pairs ranked right.
    """
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if p.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(ece)


def pair_ece(margins: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of P(chosen > rejected) = sigmoid(margin) on pairs whose chosen side is known.

    Each pair counts twice, as (chosen, rejected) with y = 1 and swapped with y = 0, so the
    bins cover [0, 1] symmetrically and a head cannot look calibrated by being always
    unsure in one direction.
    """
    p = sigmoid(margins)
    return expected_calibration_error(np.concatenate([p, 1 - p]),
                                      np.concatenate([np.ones_like(p), np.zeros_like(p)]),
                                      bins)


def fit_temperature(margins: np.ndarray) -> float:
    """T minimizing the log loss of sigmoid(margin / T) on held-out (chosen - rejected)
    margins; 1.0 when there is nothing to fit on. A grid search: one scalar, always finite."""
    m = np.asarray(margins, dtype=np.float64)
    if m.size == 0 or not np.any(m):
        return 1.0
    losses = [np.logaddexp(0.0, -m / t).mean() for t in T_GRID]
    return float(T_GRID[int(np.argmin(losses))])
