"""Seed what a user's training leaves behind (reward head, cached features, runs with gate
metrics, an adapter version row) without training: the insights API and "My assistant"
page read exactly these rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from adapters.feature_cache import features_id, store_features
from adapters.reward_head import RewardHead, save_head_version
from feedback_store.clock import now
from feedback_store.db import open_db, transaction

DIM = 8


def gate(win_rate: float, baseline: str) -> dict:
    return {"n_prompts": 4, "baseline": baseline, "candidate_reward": 0.2 + win_rate,
            "baseline_reward": 0.5, "reward_gain": win_rate - 0.5, "win_rate": win_rate,
            "candidate_kl": 0.1, "baseline_kl": 0.0, "candidate_len": 40.0,
            "baseline_len": 60.0, "seconds": 12.0}


def run_metrics(win_rate: float, baseline: str, decision: str) -> dict:
    steps = [{"step": i, "reward_mean": 0.1 * i, "kl": 0.01, "completion_len": 40.0,
              "loss": 0.5} for i in range(1, 5)]
    return {"gate": gate(win_rate, baseline), "decision": decision, "steps": steps,
            "dpo_steps": [{"loss": 0.6}, {"loss": 0.5}], "events_used": 5,
            "seconds": {"reward_head": 3.2, "dpo": 20.5, "rl": 130.0, "gate": 40.1}}


def seed(db_path: Path, adapters_dir: Path, user_id: int, base_id: str,
         message_scores: dict[int, float], dim: int = DIM) -> None:
    """A head that scores message i as message_scores[i] (features chosen so), two runs
    (v1 rejected vs base, v1 promoted), and v1 serving. `dim` is the feature width: the
    engine's own (feature_dim) where the server will also compute features."""
    def write(db) -> None:
        w = np.zeros(dim)
        w[0] = 1.0
        head = RewardHead(w=w, b=0.0, mean=np.zeros(dim), std=np.ones(dim),
                          metrics={"cv_accuracy": 0.75, "n_pairs": 6, "n_thumbs": 4, "prior": 0})
        save_head_version(db, adapters_dir / "heads" / str(user_id), user_id, head,
                          head.metrics, features_id(base_id))
        vectors = {}
        for mid, score in message_scores.items():
            v = np.zeros(dim, dtype=np.float32)
            v[0] = score
            vectors[mid] = v
        store_features(db, vectors, base_id)
        runs = db["training_runs"]
        runs.insert({"user_id": user_id, "status": "rejected", "force": 0,
                     "requested_by": "scheduler", "created_at": now(), "finished_at": now(),
                     "metrics": json.dumps(run_metrics(0.25, "base", "rejected: reward gain "
                                                       "-0.2500 over the base does not exceed "
                                                       "the margin 0.0")),
                     "events_used": 5})
        runs.insert({"user_id": user_id, "status": "succeeded", "force": 0,
                     "requested_by": "scheduler", "created_at": now(), "finished_at": now(),
                     "metrics": json.dumps(run_metrics(0.75, "base", "promoted: ...")),
                     "adapter_version": 1, "events_used": 5})
        db["adapter_versions"].insert({"user_id": user_id, "version": 1,
                                       "parent_version": None,
                                       "path": str(adapters_dir / "seeded" / "1"),
                                       "base_id": base_id, "metrics": "{}",
                                       "created_at": now()})
        db["users"].update(user_id, {"current_version": 1})

    db = open_db(db_path)
    try:
        transaction(db, write)
    finally:
        db.close()


def feature_dim(engine) -> int:
    """The width of the frozen-base features of this engine's model."""
    from adapters.features import compute_features

    prompt = [{"role": "user", "content": "hi"}]
    return int(compute_features(engine.model, engine.tokenizer, [(prompt, "hello")]).shape[1])


def add_run(db_path: Path, user_id: int, gate_metrics: dict, status: str = "rejected") -> None:
    """One more finished run with these gate metrics (no adapter version)."""
    def write(db) -> None:
        db["training_runs"].insert({
            "user_id": user_id, "status": status, "force": 0, "requested_by": "scheduler",
            "created_at": now(), "finished_at": now(), "events_used": 5,
            "metrics": json.dumps({"gate": gate_metrics, "decision": "rejected: ..."})})

    db = open_db(db_path)
    try:
        transaction(db, write)
    finally:
        db.close()
