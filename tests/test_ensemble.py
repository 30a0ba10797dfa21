"""Bootstrap reward ensembles and calibration (synthetic features, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.calibration import expected_calibration_error, fit_temperature, pair_ece, sigmoid
from adapters.ensemble import EnsembleHead, fit_ensemble
from adapters.reward_head import HeadSettings, fit_head
from feedback_store.errors import InvalidData, NotFound

DIM = 12
NO_THUMBS = (np.zeros((0, DIM)), np.zeros(0))
PLAIN = HeadSettings(shared_prior=False, l2=1.0)


def _bt_pairs(rng, w, n):
    """n pairs labelled by a Bradley-Terry user with true reward x.w: the chosen side is
    a with probability sigmoid(w.a - w.b), so the labels are noisy but calibrated."""
    A, B = rng.normal(size=(n, DIM)), rng.normal(size=(n, DIM))
    a_wins = rng.random(n) < sigmoid(A @ w - B @ w)
    C = np.where(a_wins[:, None], A, B)
    R = np.where(a_wins[:, None], B, A)
    return C, R


def test_uncertainty_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    w = rng.normal(size=DIM) * 0.5
    X = rng.normal(size=(200, DIM))
    spread = {}
    for n in (50, 1000):
        ens = fit_ensemble(*_bt_pairs(rng, w, n), *NO_THUMBS,
                           HeadSettings(shared_prior=False, l2=0.05), k=8, seed=1)
        spread[n] = float(ens.uncertainty(X).mean())
    assert spread[1000] < 0.5 * spread[50]


def test_member_zero_is_the_full_data_fit():
    rng = np.random.default_rng(1)
    C, R = _bt_pairs(rng, rng.normal(size=DIM), 60)
    ens = fit_ensemble(C, R, *NO_THUMBS, PLAIN, k=4, seed=0)
    single = fit_head(C, R, *NO_THUMBS, PLAIN)
    X = rng.normal(size=(5, DIM))
    np.testing.assert_allclose(ens.members[0].score(X), single.score(X))
    assert len(ens.members) == 4 and ens.scores(X).shape == (4, 5)
    # Resampled members really differ from each other.
    assert ens.uncertainty(X).min() > 0


def test_prob_prefers_is_calibrated_on_bradley_terry_data():
    rng = np.random.default_rng(2)
    w = rng.normal(size=DIM) * 0.4
    ens = fit_ensemble(*_bt_pairs(rng, w, 2000), *NO_THUMBS,
                       HeadSettings(shared_prior=False, l2=0.1), k=8, seed=0)
    A, B = rng.normal(size=(4000, DIM)), rng.normal(size=(4000, DIM))
    p = ens.prob_prefers(A, B)
    a_wins = (rng.random(4000) < sigmoid(A @ w - B @ w)).astype(float)
    assert expected_calibration_error(p, a_wins) < 0.03
    np.testing.assert_allclose(p, 1 - ens.prob_prefers(B, A), atol=1e-12)


def test_thumbs_only_and_prior_members():
    rng = np.random.default_rng(3)
    w = rng.normal(size=DIM)
    X = rng.normal(size=(100, DIM))
    y = (X @ w > 0).astype(float)
    prior = fit_head(*_bt_pairs(rng, w, 300), *NO_THUMBS, PLAIN)
    ens = fit_ensemble(np.zeros((0, DIM)), np.zeros((0, DIM)), X, y,
                       HeadSettings(shared_prior=True), prior=prior, k=3)
    assert all(m.metrics["prior"] for m in ens.members)
    assert ens.score(X).shape == (100,)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    ens = fit_ensemble(*_bt_pairs(rng, rng.normal(size=DIM), 40), *NO_THUMBS, PLAIN, k=3)
    ens.save(tmp_path / "e")
    again = EnsembleHead.load(tmp_path / "e")
    X = rng.normal(size=(7, DIM))
    np.testing.assert_array_equal(ens.scores(X), again.scores(X))
    with pytest.raises(NotFound):
        EnsembleHead.load(tmp_path / "missing")


def test_bad_sizes_rejected():
    rng = np.random.default_rng(5)
    C, R = _bt_pairs(rng, rng.normal(size=DIM), 10)
    with pytest.raises(InvalidData):
        fit_ensemble(C, R, *NO_THUMBS, PLAIN, k=0)
    with pytest.raises(InvalidData):
        EnsembleHead([])


def test_ece_and_temperature():
    rng = np.random.default_rng(6)
    true_margin = rng.normal(size=5000) * 2
    chosen_first = rng.random(5000) < sigmoid(true_margin)
    margins = np.where(chosen_first, true_margin, -true_margin)   # chosen - rejected
    assert pair_ece(margins) < 0.03
    assert pair_ece(3 * margins) > 0.08          # over-confident
    assert fit_temperature(3 * margins) == pytest.approx(3.0, rel=0.15)
    assert pair_ece(3 * margins / fit_temperature(3 * margins)) < 0.03
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([1.0, 0.0])) == \
        pytest.approx(0.4)
