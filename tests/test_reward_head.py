"""Frozen features (tiny model) and reward heads (synthetic features)."""

from __future__ import annotations

import numpy as np
import pytest

from adapters import feature_cache as fcache
from adapters import features as feat
from adapters.reward_head import (
    HeadSettings,
    RewardHead,
    cross_val_accuracy,
    fit_head,
    pair_accuracy,
    save_head_version,
)
from feedback_store.errors import BadRequest, InvalidData

ITEMS = [
    ([{"role": "user", "content": "How do I boil an egg?"}], "Put it in boiling water."),
    ([{"role": "user", "content": "How do I boil an egg?"}], "I will not help with that."),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
      {"role": "user", "content": "Tell me a joke " * 80}], "Why did the chicken..."),
]


def test_features_fixed_shape_and_deterministic(tiny_model, tokenizer):
    X = feat.compute_features(tiny_model, tokenizer, ITEMS, max_tokens=64)
    dim = len(feat.FEATURE_LAYERS) * feat.POOLS * tiny_model.config.hidden_size
    assert X.shape == (3, dim) and X.dtype == np.float32
    assert np.array_equal(X, feat.compute_features(tiny_model, tokenizer, ITEMS, max_tokens=64))
    assert not np.allclose(X[0], X[1])


def test_features_match_a_plain_forward(tiny_model, tokenizer):
    import torch

    r = feat.render(tokenizer, *ITEMS[0], feat.FEATURE_MAX_TOKENS, feat.FEATURE_ANSWER_TOKENS)
    ids = torch.tensor([list(r.prefix + r.answer)])
    deepest = feat.layer_indices(tiny_model, feat.FEATURE_LAYERS)[-1]
    with torch.no_grad():
        h = tiny_model(input_ids=ids, output_hidden_states=True).hidden_states[deepest][0]
    p = len(r.prefix)
    breaks = [p + i for i, nl in enumerate(r.newline) if nl] or [len(h) - 1]
    pools = {"answer_mean": h[p:].mean(0), "sequence_mean": h.mean(0), "last": h[-1],
             "newline_mean": h[breaks].mean(0)}
    expected = torch.cat([pools[name] for name in feat.FEATURE_POOLS]).numpy()
    X = feat.compute_features(tiny_model, tokenizer, ITEMS[:1])
    np.testing.assert_allclose(X[0, -expected.size:], expected, atol=1e-5)


def test_long_prompt_truncated_to_budget(tokenizer):
    r = feat.render(tokenizer, *ITEMS[2], max_tokens=64)
    assert len(r.prefix) + len(r.answer) <= 64


def test_features_ignore_peft_adapter(tiny_model, tokenizer):
    from peft import LoraConfig, get_peft_model

    plain = feat.compute_features(tiny_model, tokenizer, ITEMS)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)
    wrapped = get_peft_model(tiny_model, lora).eval()
    import torch

    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():       # the adapter really changes the model when enabled...
        on = wrapped(input_ids=ids).logits
        with wrapped.disable_adapter():
            off = wrapped(input_ids=ids).logits
    assert not torch.allclose(on, off)
    # ...but features are computed with it disabled.
    np.testing.assert_array_equal(feat.compute_features(wrapped, tokenizer, ITEMS), plain)


def _counting(monkeypatch):
    calls = []
    real = feat.compute_features

    def counted(model, tokenizer, items, **kw):
        calls.append(len(items))
        return real(model, tokenizer, items, **kw)

    monkeypatch.setattr(feat, "compute_features", counted)
    return calls


def test_db_cache_computes_once_per_base(db, tiny_model, tokenizer, monkeypatch):
    calls = _counting(monkeypatch)
    items = {10: ITEMS[0], 11: ITEMS[1]}
    first = fcache.ensure_features(db, tiny_model, tokenizer, "base@a", items)
    again = fcache.ensure_features(db, tiny_model, tokenizer, "base@a", items)
    assert calls == [2]
    for mid in items:
        np.testing.assert_array_equal(first[mid], again[mid])
    fcache.ensure_features(db, tiny_model, tokenizer, "base@a", {**items, 12: ITEMS[2]})
    fcache.ensure_features(db, tiny_model, tokenizer, "base@b", items)
    assert calls == [2, 1, 2]
    assert set(fcache.cached_features(db, [10, 11, 12, 99], "base@a")) == {10, 11, 12}


def test_db_cache_is_keyed_by_feature_spec(db, tiny_model, tokenizer, monkeypatch):
    items = {10: ITEMS[0]}
    fcache.ensure_features(db, tiny_model, tokenizer, "base@a", items)
    stored = [r[0] for r in db.execute("SELECT base_id FROM features").fetchall()]
    assert stored == [f"base@a|{feat.feature_spec()}"]
    # Another pooling setting must not read the vectors stored under the current one.
    monkeypatch.setattr(feat, "FEATURE_POOLS", ("last",))
    monkeypatch.setattr(feat, "POOLS", 1)
    assert fcache.cached_features(db, [10], "base@a") == {}
    fresh = fcache.ensure_features(db, tiny_model, tokenizer, "base@a", items)
    assert fresh[10].size == len(feat.FEATURE_LAYERS) * tiny_model.config.hidden_size


def test_disk_cache_computes_once(tmp_path, tiny_model, tokenizer, monkeypatch):
    calls = _counting(monkeypatch)
    X = fcache.disk_cached_features(tiny_model, tokenizer, "base@a", ITEMS, tmp_path)
    Y = fcache.disk_cached_features(tiny_model, tokenizer, "base@a", ITEMS[::-1], tmp_path)
    np.testing.assert_array_equal(X[::-1], Y)
    assert calls == [3]
    fcache.disk_cached_features(tiny_model, tokenizer, "base@b", ITEMS[:1], tmp_path)
    assert calls == [3, 1]


# ---- heads on synthetic features ------------------------------------------------------

def _pairs(rng, w, n, dim=20):
    """n pairs whose chosen side scores higher under the true weights w."""
    A, B = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
    swap = (A @ w) < (B @ w)
    A[swap], B[swap] = B[swap].copy(), A[swap].copy()
    return A, B


NONE = (np.zeros((0, 20)), np.zeros(0))


def test_bradley_terry_ranks_separable_pairs():
    rng = np.random.default_rng(0)
    w = rng.normal(size=20)
    C, R = _pairs(rng, w, 200)
    head = fit_head(C, R, *NONE, HeadSettings(shared_prior=False, l2=0.1))
    Ct, Rt = _pairs(rng, w, 200)
    assert pair_accuracy(head, Ct, Rt) > 0.9


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_prior_pulls_small_users_toward_global():
    rng = np.random.default_rng(1)
    w_global = rng.normal(size=20)
    w_user = w_global.copy()
    w_user[:10] *= -1                        # this user disagrees on half the features
    global_head = fit_head(*_pairs(rng, w_global, 400), *NONE,
                           HeadSettings(shared_prior=False, l2=0.1))
    settings = HeadSettings(shared_prior=True, prior_strength=1.0)
    few = fit_head(*_pairs(rng, w_user, 5), *NONE, settings, prior=global_head)
    many = fit_head(*_pairs(rng, w_user, 400), *NONE, settings, prior=global_head)
    assert _cos(few.w, global_head.w) > 0.9
    assert _cos(many.w, global_head.w) < _cos(few.w, global_head.w) - 0.3
    test = _pairs(rng, w_user, 300)
    assert pair_accuracy(many, *test) > pair_accuracy(global_head, *test) + 0.15
    off = fit_head(*_pairs(rng, w_user, 5), *NONE,
                   HeadSettings(shared_prior=False), prior=global_head)
    assert off.metrics["prior"] is False


def test_thumbs_only_fit():
    rng = np.random.default_rng(2)
    w = rng.normal(size=20)
    X = rng.normal(size=(300, 20))
    y = (X @ w > 0).astype(float)
    head = fit_head(np.zeros((0, 20)), np.zeros((0, 20)), X, y)
    Xt = rng.normal(size=(200, 20))
    assert np.mean((head.score(Xt) > 0) == (Xt @ w > 0)) > 0.85


def test_fit_rejects_empty_and_mismatched():
    with pytest.raises(InvalidData):
        fit_head(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(InvalidData):
        fit_head(np.ones((3, 4)), np.ones((2, 4)), np.zeros((0, 4)), np.zeros(0))


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    head = fit_head(*_pairs(rng, rng.normal(size=20), 50), *NONE)
    head.save(tmp_path / "h")
    again = RewardHead.load(tmp_path / "h")
    X = rng.normal(size=(10, 20))
    np.testing.assert_array_equal(head.score(X), again.score(X))
    assert again.metrics["n_pairs"] == 50


def test_save_head_version_records_rows(db, tmp_path):
    rng = np.random.default_rng(4)
    head = fit_head(*_pairs(rng, rng.normal(size=20), 30), *NONE)
    v1 = save_head_version(db, tmp_path / "global", None, head, {"cv": 0.7}, "base@a")
    v2 = save_head_version(db, tmp_path / "global", None, head, {"cv": 0.8}, "base@a")
    assert (v1, v2) == (1, 2)
    assert RewardHead.load(tmp_path / "global" / "2").metrics["cv"] == 0.8
    rows = list(db["reward_heads"].rows_where("user_id IS NULL", order_by="version"))
    assert [r["version"] for r in rows] == [1, 2] and rows[0]["base_id"] == "base@a"


def test_cross_val_accuracy():
    rng = np.random.default_rng(5)
    C, R = _pairs(rng, rng.normal(size=20), 100)
    acc = cross_val_accuracy(C, R, *NONE, HeadSettings(shared_prior=False, l2=0.1))
    assert 0.8 < acc <= 1.0
    assert cross_val_accuracy(C[:1], R[:1], *NONE) is None


# ---- eval reward on synthetic features --------------------------------------------------

def test_read_pairs_names_the_bad_line(tmp_path):
    from assistant.eval_reward import read_pairs

    good = '{"user": "u", "prompt": [{"role": "user", "content": "q"}], ' \
           '"chosen": "a", "rejected": "b"}'
    path = tmp_path / "pairs.jsonl"
    path.write_text(good + "\n" + '{"user": "u", "prompt": "q"}\n')
    with pytest.raises(BadRequest, match="line 2"):
        read_pairs(path)
    path.write_text(good + "\n{oops\n")
    with pytest.raises(BadRequest, match="line 2"):
        read_pairs(path)
    path.write_text(good + "\n")
    assert read_pairs(path)[0].chosen == "a"


def test_evaluate_personal_beats_global_when_users_disagree():
    from assistant.eval_reward import Pair, evaluate, split_users

    rng = np.random.default_rng(6)
    w = rng.normal(size=20)
    w_other = w.copy()
    w_other[:12] *= -1
    Ca, Ra = _pairs(rng, w, 300)
    Cb, Rb = _pairs(rng, w_other, 300)
    pairs = [Pair("a" if i < 300 else "b", [], "", "") for i in range(600)]
    splits = split_users(pairs, 0.5, seed=0)
    again = split_users(pairs, 0.5, seed=0)
    assert all(np.array_equal(splits[u][0], again[u][0]) for u in splits)
    users = evaluate(np.concatenate([Ca, Cb]), np.concatenate([Ra, Rb]), splits,
                     HeadSettings(), methods=("global", "personal_prior", "selected", "evidence"))
    for user in ("a", "b"):
        r = users[user]
        assert (r["n_train"], r["n_test"]) == (150, 150)
        assert r["acc"]["personal_prior"] > r["acc"]["global"] + 0.05
        assert r["acc"]["selected"] > r["acc"]["global"] + 0.05
        assert r["acc"]["evidence"] > r["acc"]["global"] + 0.05
        assert set(r["ece"]) == {"global", "personal_prior", "selected", "evidence"}


def test_eval_seeds_report_mean_std_and_keep_each_seed(tmp_path, monkeypatch):
    import json

    from assistant import eval_reward

    rng = np.random.default_rng(7)
    w = rng.normal(size=20)
    C, R = _pairs(rng, w, 120)
    rows = [{"user": "u", "prompt": [{"role": "user", "content": f"q{i}"}], "chosen": "a",
             "rejected": "b"} for i in range(120)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(eval_reward, "pair_features", lambda *a, **k: (C, R))
    out = tmp_path / "out.json"
    result = eval_reward.run(data, 0.5, 3, out, tmp_path, seeds=3,
                             methods=("global", "personal"))
    saved = json.loads(out.read_text())
    assert saved["seeds"] == [3, 4, 5] and set(saved["per_seed"]) == {"3", "4", "5"}
    accs = [saved["per_seed"][s]["u"]["acc"]["personal"] for s in ("3", "4", "5")]
    mean, std = result["summary"]["u"]["acc"]["personal"]
    assert mean == pytest.approx(np.mean(accs), abs=1e-4)
    assert std == pytest.approx(np.std(accs), abs=1e-4) and std > 0
    assert 0 <= result["summary"]["u"]["ece"]["personal"][0] <= 1
