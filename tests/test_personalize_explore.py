"""bench/personalize.py's exploration figures: informative pairs, liked features, decisive."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import pytest

from bench import feedback, harness, personalize, pipeline, report, scoring
from bench.harness import sigterm_exits
from bench.personas import load_personas, parse_persona

ROOT = Path(__file__).resolve().parent.parent

EXAMPLES = parse_persona({"name": "ex", "temperature": 0.5, "thumbs_up_at": 1.0,
                          "thumbs_down_at": -1.0,
                          "utility": {"questions": 1.0, "words": -0.01,
                                      "phrases": {"for example": 2.0, "boring": -1.0}}})


def test_liked_features_are_positive_weights_and_phrases_plus_any():
    assert feedback.liked_names(EXAMPLES) == ["questions", "phrase:for example", "any"]
    assert feedback.liked_features(EXAMPLES, "For example, rivers.") == {
        "phrase:for example", "any"}
    assert feedback.liked_features(EXAMPLES, "Rivers flow.") == set()


def test_informative_pairs_differ_by_more_than_the_temperature():
    log = feedback.FeedbackLog()
    cands = [{"content": "Rivers flow.", "source": "personal"},
             {"content": "For example, rivers flow.", "source": "arm", "arm": "example"},
             {"content": "Rivers flow too.", "source": "base"}]
    log.shown(EXAMPLES, cands)
    s = log.summary()
    # 3 pairs; only the two with the example phrase differ by 2 - tiny length terms > 0.5.
    assert s["shown_pairs"] == 3 and s["informative_pair_share"] == round(2 / 3, 3)
    assert s["liked_feature_share"]["phrase:for example"] == round(1 / 3, 3)
    assert s["pairs_differing_in_feature"] == {"phrase:for example": 2, "any": 2}
    assert s["shown_sources"] == {"personal": 1, "arm:example": 1, "base": 1}
    assert s["liked_share_by_source"] == {"personal": 0.0, "arm:example": 1.0, "base": 0.0}


def test_decisive_win_rate_excludes_ties():
    ours, base = [["For example, x", "x"]], [["x", "y"]]
    d = scoring.decisive(EXAMPLES, ours, base)
    # pairs: (ex, x) win, (ex, y) win, (x, x) tie, (x, y) tie (same length, no feature)
    assert d == {"decisive_win_rate": 1.0, "tie_share": 0.5}


def test_variants_name_two_users_per_persona_for_both():
    personas = [EXAMPLES]
    assert [v.user for v in harness.variants(personas, "on")] == ["ex"]
    both = harness.variants(personas, "both")
    assert [(v.user, v.mode) for v in both] == [("ex-explore-on", "on"),
                                                ("ex-explore-off", "off")]


def test_extra_personas_load_and_each_likes_something_countable():
    personas = load_personas(ROOT / "bench" / "personas-extra")
    assert len(personas) >= 6
    for p in personas:
        assert feedback.liked_names(p), p.name


def test_reports_render_for_feedback_only_and_both_modes():
    log = feedback.FeedbackLog()
    log.shown(EXAMPLES, [{"content": "a?", "source": "personal"},
                         {"content": "b", "source": "base"}])
    fb = {"ex-explore-on@6": log.summary(), "ex-explore-off@6": log.summary()}
    cost = {"turns": 2, "seconds_off": 1.0, "seconds_on": 1.5, "ratio": 1.5}
    only = {"started": "now", "settings": {}, "turn_cost": cost, "feedback": fb,
            "seconds": {"total": 1}}
    text = report.markdown(only)
    assert "ratio 1.5" in text and "| ex-explore-on@6 | 1.000 | 1 |" in text
    stage = {"events": 6, "specificity": {"ex": {"ex": 0.6}}, "head_to_head": {"ex": {}},
             "personas": {"ex": {"win_rate": 0.6, "decisive_win_rate": 0.7, "tie_share": 0.1,
                                 "liked_share_personal": {"any": 0.5},
                                 "liked_share_base": {"any": 0.1}, "utility_personal": 1.0,
                                 "utility_base": 0.0, "words_personal": 10,
                                 "words_base": 20, "reward_head_heldout": {"accuracy": 0.8},
                                 "reward_head_cv_accuracy": 0.7,
                                 "run": {"status": "succeeded", "decision": "promoted"}}}}
    mode = {"rounds": [stage]}
    both = dict(only, rounds=[stage], modes={"on": mode, "off": mode})
    text = report.markdown(both)
    assert "# Exploration off" in text and "| ex | on | 0.600 | 0.700 | 0.100 | 0.800 |" in text
    # Every table is well formed: its rule and rows have as many cells as its header (a
    # short rule makes Markdown show the table as plain text).
    blocks = [b.splitlines() for b in text.split("\n\n") if b.startswith("|")]
    assert len(blocks) >= 8
    for block in blocks:
        assert {line.count("|") for line in block} == {block[0].count("|")}, block[:2]


def test_on_vs_off_compares_exactly_the_turns_the_off_user_had():
    # The off user had 3 turns; the on user's share is over its own first 3 turns (1 of 5
    # pairs), not the mean of its blocks of 20 (which would mix in turns off never had).
    on = feedback.FeedbackLog(turn_pairs=[(1, 0), (3, 1), (1, 0)] + [(1, 1)] * 30)
    off = feedback.FeedbackLog(turn_pairs=[(1, 0), (1, 1), (3, 0)])
    on.shown_pairs, on.informative = 35, 31
    off.shown_pairs, off.informative = 5, 1
    rows = scoring.informative_rows({"ex-explore-on": on.summary(),
                                     "ex-explore-off": off.summary(), "solo": off.summary()})
    assert rows == {"ex": {"off": 0.2, "on_same": 0.2, "turns_compared": 3, "ratio": 1.0,
                           "on_all": 0.886, "on_by_block": [0.818, 1.0]}}
    assert harness.split_user("ex-explore-off") == ("ex", "off")
    assert harness.split_user("solo") == ("solo", None)


class FakeApi:
    """The chat and feedback endpoints of a server, answered in memory; every call logged."""

    calls: list[tuple[str, str, dict | None]] = []
    ids = itertools.count(1)

    def __init__(self, url: str = "http://127.0.0.1:9", key: str = "", timeout: float = 0):
        self.client = type("Client", (), {"base_url": url})()

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        FakeApi.calls.append((method, path, body))
        if path != "/api/chat":
            return {}
        return {"candidates": [{"id": next(FakeApi.ids), "content": f"Answer {i}, for example?",
                                "source": "personal"} for i in range(body["n"])]}

    def close(self) -> None:
        pass


def test_feedback_only_runs_every_stage_without_training_or_evaluation(monkeypatch):
    monkeypatch.setattr(pipeline, "Api", FakeApi)
    FakeApi.calls = []
    args = personalize.parse_args(["--feedback-only", "--events", "2", "--rounds", "2",
                                   "--url", "http://127.0.0.1:9", "--admin-key", "k"])
    variant = harness.variants([EXAMPLES], "on")[0]
    shared = pipeline.Shared()
    pipeline.persona_pipeline(variant, "key", FakeApi(), ["p1", "p2", "p3", "p4"], ["h1"],
                              [2, 4], args, shared)
    assert sorted(shared.stage_info) == [("ex", 2), ("ex", 4)]
    assert all(info["feedback"]["prompts"] == 2 for info in shared.stage_info.values())
    # No held-out answers and no training: only the four feedback turns chatted.
    chats = [body["content"] for _, path, body in FakeApi.calls if path == "/api/chat"]
    assert sorted(chats) == ["p1", "p2", "p3", "p4"] and shared.base == []
    assert not any(path.startswith("/admin") for _, path, _ in FakeApi.calls)


def test_arm_probe_scores_the_served_arm_and_the_words_the_model_wrote():
    from assistant.arms import parse_arm
    from bench import arm_probe

    arm = parse_arm("summary | Summarize. | closing: In short,")
    served = ["Rivers flow.\n\nIn short, water moves.", "Rivers flow.\n\nIn short, overall yes."]
    answers = {"base": ["Rivers flow.", "Overall, rivers."], "arm:summary": served,
               f"arm:summary{arm_probe.PLAIN}": ["Rivers flow.", "Rivers flow down."]}
    fig = arm_probe.arm_figures([arm], answers)["summary"]
    # The cue shows the feature in every served answer; the model wrote it in one of two.
    assert (fig["base"], fig["plain"], fig["served"], fig["served_model_written"]) == (
        0.5, 0.0, 1.0, 0.5)
    opened = parse_arm("enthusiastic | Be upbeat. | opening: Great question! ")
    assert arm_probe.model_written(opened, "Great question! Yes.") == " Yes."
    assert "|" in "\n".join(arm_probe.arm_report({"summary": fig}))


def test_a_terminated_benchmark_unwinds_so_its_server_is_stopped():
    """SIGTERM inside `server()`'s block runs its finally (which stops the started server);
    Python's default action would end the process and orphan the server."""
    unwound = []
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:
        try:
            with sigterm_exits():
                os.kill(os.getpid(), signal.SIGTERM)    # handled before the next line
                unwound.append("not reached")
        finally:
            unwound.append(True)
    assert exc.value.code == 128 + signal.SIGTERM and unwound == [True]
    assert signal.getsignal(signal.SIGTERM) is before
