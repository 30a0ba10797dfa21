"""Do not learn from noise (issue 14): a head needs enough pairs and above-chance CV
accuracy before RL and the gate trust it, and the gate's prompts are unseen by that head."""

from __future__ import annotations

import numpy as np

from adapters.jobs import HeadData, RunSettings, evidence, split_prompts
from tests.test_training_flow import give_feedback, serve, train, wait


def test_evidence_needs_pairs_and_accuracy_above_the_floor():
    s = RunSettings(min_head_pairs=12, min_head_accuracy=0.55)
    assert evidence(0.9, 4, s)[0] is False and "4 preference pairs" in evidence(0.9, 4, s)[1]
    assert evidence(0.55, 30, s)[0] is False and "not above" in evidence(0.55, 30, s)[1]
    assert evidence(None, 30, s)[0] is False
    assert evidence(0.7, 30, s) == (True, "reward head cv accuracy 0.700 on 30 pairs")
    assert evidence(None, 0, RunSettings(min_head_pairs=0, min_head_accuracy=0.0))[0]


def test_gate_head_data_leaves_out_the_held_out_turns():
    d = HeadData(np.arange(8.0).reshape(4, 2), np.zeros((4, 2)), np.ones((2, 2)),
                 np.array([1.0, 0.0]), np.array([10, 11, 10, 12]), np.array([11, 13]))
    seen = d.without_turns({10, 13})
    assert seen.pair_turns.tolist() == [11, 12] and seen.chosen.tolist() == [[2, 3], [6, 7]]
    assert seen.thumb_turns.tolist() == [11] and seen.labels.tolist() == [1.0]


def test_split_keeps_turn_ids_with_their_prompts():
    turns = [(i, [{"role": "user", "content": str(i)}]) for i in range(8)]
    train, held = split_prompts(turns, 0.25, 0)
    assert len(held) == 2 and {t for t, _ in train} | {t for t, _ in held} == set(range(8))
    assert all(p[0]["content"] == str(t) for t, p in held)


def test_a_run_on_too_few_pairs_is_skipped_with_the_reason(tmp_path, tiny_dir):
    server, thread, live = serve(tmp_path, tiny_dir, ASSISTANT_TRAINING_MIN_HEAD_PAIRS=12,
                                 ASSISTANT_TRAINING_MIN_HEAD_ACCURACY=0.55)
    try:
        key = live.add_user("fay")
        give_feedback(live, key, turns=4)
        run = wait(live, train(live, "fay")["id"])
        assert run["status"] == "rejected", run["error"]
        decision = run["metrics"]["decision"]
        assert decision.startswith("skipped: not enough evidence") and "min_head_pairs" in decision
        assert run["adapter_version"] is None and run["events_used"] == 4
        assert not (live.config.adapters_dir / "fay" / "1").exists()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
