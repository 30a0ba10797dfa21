"""Per-user prior strength by cross-validation, and the shared low-rank basis (synthetic)."""

from __future__ import annotations

import numpy as np

from adapters.calibration import pair_ece, sigmoid
from adapters.head_selection import Selection, fit_evidence_head, fit_selected_head, log_evidence
from adapters.lowrank import fit_lowrank, fit_user_weights
from adapters.reward_head import HeadSettings, fit_head, pair_accuracy

DIM = 30
NO_THUMBS = (np.zeros((0, DIM)), np.zeros(0))
PLAIN = HeadSettings(shared_prior=False, l2=0.3)


def _bt_pairs(rng, w, n):
    A, B = rng.normal(size=(n, DIM)), rng.normal(size=(n, DIM))
    a_wins = rng.random(n) < sigmoid(A @ w - B @ w)
    return np.where(a_wins[:, None], A, B), np.where(a_wins[:, None], B, A)


def _acc(head, w, rng, n=3000):
    A, B = rng.normal(size=(n, DIM)), rng.normal(size=(n, DIM))
    return float(np.mean((head.score(A) > head.score(B)) == (A @ w > B @ w)))


def test_selection_drops_a_prior_that_points_the_wrong_way():
    rng = np.random.default_rng(0)
    w_user = rng.normal(size=DIM) * 0.5
    wrong = fit_head(*_bt_pairs(rng, -w_user, 2000), *NO_THUMBS, PLAIN)
    C, R = _bt_pairs(rng, w_user, 60)
    fixed = fit_head(C, R, *NO_THUMBS, HeadSettings(prior_strength=1.0), prior=wrong)
    chosen = fit_selected_head(C, R, *NO_THUMBS, HeadSettings(), wrong)
    assert chosen.alpha == 0.0
    assert _acc(chosen.head, w_user, rng) > _acc(fixed, w_user, rng) + 0.1


def test_selection_keeps_a_good_prior_for_a_user_with_few_labels():
    rng = np.random.default_rng(1)
    w = rng.normal(size=DIM) * 0.5
    good = fit_head(*_bt_pairs(rng, w, 2000), *NO_THUMBS, PLAIN)
    C, R = _bt_pairs(rng, w, 20)
    chosen = fit_selected_head(C, R, *NO_THUMBS, HeadSettings(), good)
    alone = fit_head(C, R, *NO_THUMBS, PLAIN)
    assert chosen.alpha > 0
    assert _acc(chosen.head, w, rng) > _acc(alone, w, rng) + 0.05


def test_cv_temperature_calibrates_margins():
    rng = np.random.default_rng(2)
    w = rng.normal(size=DIM) * 0.3
    C, R = _bt_pairs(rng, w, 400)
    Ct, Rt = _bt_pairs(rng, w, 4000)
    raw = fit_head(C, R, *NO_THUMBS, HeadSettings(shared_prior=False, l2=30.0))
    chosen = fit_selected_head(C, R, *NO_THUMBS, HeadSettings(shared_prior=False), None,
                               Selection(strengths=(30.0,)))
    assert chosen.temperature < 1.0                        # l2=30 shrinks margins a lot
    assert pair_ece(chosen.head.score(Ct) - chosen.head.score(Rt)) < 0.04
    assert pair_ece(raw.score(Ct) - raw.score(Rt)) > 0.08
    # Temperature only rescales: the ranking is the raw head's.
    assert pair_accuracy(chosen.head, Ct, Rt) == pair_accuracy(raw, Ct, Rt)


def test_few_pairs_fall_back_to_the_settings():
    rng = np.random.default_rng(3)
    C, R = _bt_pairs(rng, rng.normal(size=DIM), 3)
    chosen = fit_selected_head(C, R, *NO_THUMBS, HeadSettings(shared_prior=False), None)
    assert (chosen.alpha, chosen.temperature) == (0.0, 1.0)


def test_lowrank_basis_gives_new_users_good_heads_from_few_labels():
    """Users mixed from 3 directions: a basis fitted on 30 users lets a new user with 10
    pairs beat both their own 10-pair head and the consensus."""
    rng = np.random.default_rng(4)
    directions = rng.normal(size=(3, DIM))
    mixes = rng.dirichlet(np.full(3, 0.3), size=41) * 3
    data = {f"u{i}": _bt_pairs(rng, mixes[i] @ directions, 150) for i in range(40)}
    model = fit_lowrank(data, rank=4)
    w_new = mixes[40] @ directions
    C, R = _bt_pairs(rng, w_new, 10)
    new = fit_user_weights(model, C, R)
    own = fit_head(C, R, *NO_THUMBS, PLAIN)
    consensus = model.head(None)
    assert _acc(new, w_new, rng) > _acc(own, w_new, rng) + 0.1
    assert _acc(new, w_new, rng) > _acc(consensus, w_new, rng) + 0.05
    assert _acc(model.user_head("u0"), mixes[0] @ directions, rng) > 0.85


def test_training_fits_the_selected_head_when_enabled(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from adapters import jobs

    rng = np.random.default_rng(5)
    data = jobs.HeadData(*_bt_pairs(rng, rng.normal(size=DIM), 40), *NO_THUMBS,
                         pair_turns=np.arange(40))
    saved = []
    monkeypatch.setattr(jobs, "backfill_features", lambda db, base, uid: 0)
    monkeypatch.setattr(jobs, "head_data", lambda db, base, uid: data)
    monkeypatch.setattr(jobs, "fit_prior", lambda db, base, uid, settings: None)
    monkeypatch.setattr(jobs, "_save_ensemble", lambda *a: None)    # no head folder here
    monkeypatch.setattr(jobs, "save_head_version",
                        lambda db, folder, uid, head, metrics, fid, **kw: saved.append(head) or 1)
    base = SimpleNamespace(base_id="base@a")
    user = {"id": 1, "name": "u"}
    for select in (True, False):
        settings = jobs.RunSettings(head=HeadSettings(select_prior=select))
        jobs.fit_user_head(None, base, tmp_path, user, settings, lambda msg: None)
    assert "temperature" in saved[0].metrics and "temperature" not in saved[1].metrics


def test_evidence_drops_a_wrong_prior_and_keeps_a_good_one():
    rng = np.random.default_rng(3)
    w_user = rng.normal(size=DIM) * 0.5
    wrong = fit_head(*_bt_pairs(rng, -w_user, 2000), *NO_THUMBS, PLAIN)
    good = fit_head(*_bt_pairs(rng, w_user, 2000), *NO_THUMBS, PLAIN)
    C, R = _bt_pairs(rng, w_user, 60)
    away = fit_evidence_head(C, R, *NO_THUMBS, HeadSettings(), wrong)
    toward = fit_evidence_head(C, R, *NO_THUMBS, HeadSettings(), good)
    fixed = fit_head(C, R, *NO_THUMBS, HeadSettings(prior_strength=1.0), prior=wrong)
    assert away.alpha == 0.0 and toward.alpha == 1.0
    assert _acc(away.head, w_user, rng) > _acc(fixed, w_user, rng) + 0.1


def test_laplace_evidence_matches_the_exact_gaussian_integral_in_one_dimension():
    # One pair, one weight: integrate exp(-E(w)) numerically and compare. The Laplace
    # approximation is off only by the curvature's change around the mode (tiny here).
    d, lam, target = np.array([[0.7]]), 2.0, np.array([0.3])
    grid = np.linspace(-12, 12, 200001)
    energy = np.logaddexp(0.0, -0.7 * grid) + lam * (grid - target[0]) ** 2
    exact = np.log(np.trapezoid(np.exp(-energy), grid) * np.sqrt(lam / np.pi))
    w = grid[np.argmin(energy)]
    approx = log_evidence(d, np.zeros((0, 1)), np.zeros(0), 0.5, lam, np.array([w]), 0.0,
                          target)
    assert abs(approx - exact) < 0.003     # without the log-det term: 0.015
