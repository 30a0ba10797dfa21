"""Scoring in bench/scoring.py: win rates, specificity, head to head, re-scoring."""

from __future__ import annotations

import json

import pytest

from bench import best_of_base, scoring
from bench.personas import parse_persona

SHORT = parse_persona({"name": "short", "temperature": 0.0, "thumbs_up_at": 0.0,
                       "thumbs_down_at": -1.0, "utility": {"words": -1.0}})
LISTS = parse_persona({"name": "lists", "temperature": 0.0, "thumbs_up_at": 0.0,
                       "thumbs_down_at": -1.0, "utility": {"has_bullets": 1.0}})
LONG = "one two three four five six"
BRIEF = "one two"
LISTED = "Points:\n- one\n- two\nthree"       # 6 words ("-" counts), bulleted


def test_win_rate_counts_ties_half_and_averages_per_prompt():
    # Prompt 1: BRIEF beats LONG (1.0); prompt 2: two of ours vs one base, a win and a tie.
    ours, base = [[BRIEF], [BRIEF, LONG]], [[LONG], [LONG]]
    assert scoring.win_rate(SHORT, ours, base) == (1.0 + 0.75) / 2


def test_specificity_and_head_to_head_tell_the_adapters_apart():
    base = [[LONG], [LONG]]
    own = {"short": [[BRIEF], [BRIEF]], "lists": [[LISTED], [LISTED]]}
    scores = scoring.score_answers([SHORT, LISTS], base, own)
    assert scores["specificity"] == {"short": {"short": 1.0, "lists": 0.5},
                                     "lists": {"short": 0.5, "lists": 1.0}}
    assert scores["head_to_head"] == {"short": {"lists": 1.0}, "lists": {"short": 1.0}}
    assert scores["personas"]["short"]["win_rate"] == 1.0
    assert scores["personas"]["short"]["words_personal"] == 2.0


def test_rescore_rewrites_every_utility_figure(tmp_path):
    answers = {"heldout": ["a", "b"], "base": [[LONG], [LONG]],
               "personal": {"short@20": [[LONG], [LONG]], "lists@20": [[LONG], [LONG]],
                            "short@40": [[BRIEF], [BRIEF]], "lists@40": [[LISTED], [LISTED]]}}
    stale = {"win_rate": 0.0, "utility_personal": 0.0, "run": {"status": "succeeded"}}
    results = {"personas": {"short": dict(stale), "lists": dict(stale)},
               "rounds": [{"events": e, "personas": {"short": dict(stale),
                                                      "lists": dict(stale)}}
                          for e in (20, 40)]}
    fresh = scoring.rescore(results, answers, [SHORT, LISTS])
    assert [r["personas"]["short"]["win_rate"] for r in fresh["rounds"]] == [0.5, 1.0]
    assert fresh["personas"]["lists"]["win_rate"] == 1.0
    assert fresh["rounds"][0]["personas"]["short"]["run"] == {"status": "succeeded"}
    assert fresh["head_to_head"]["lists"]["short"] == 1.0
    # The stale utilities are recomputed per round (SHORT's utility is minus the word count),
    # and the summary per persona is the last round's.
    assert [r["personas"]["short"]["utility_personal"] for r in fresh["rounds"]] == [-6.0, -2.0]
    assert fresh["personas"]["short"]["utility_personal"] == -2.0
    assert fresh["personas"]["short"]["win_rate"] == 1.0
    assert "words_personal" not in fresh["personas"]["short"]      # only figures it had
    # results.json round-trips: plain JSON types only (no tuples, numpy scalars or NaN).
    assert json.loads(json.dumps(fresh, allow_nan=False)) == fresh


def test_best_of_base_scores_each_personas_pick_for_every_judge():
    # Prompt 1: SHORT picks BRIEF, LISTS picks LISTED. Prompt 2: no list anywhere, so LISTS
    # picks the first of its ties (LONG) and SHORT picks BRIEF.
    samples = [{"prompt": "p1", "samples": [LONG, BRIEF, LISTED]},
               {"prompt": "p2", "samples": [LONG, BRIEF, LONG]}]
    table = best_of_base.matrix([SHORT, LISTS], samples)
    # SHORT judging LISTS' picks: LISTED (6 words) ties LONG, beats nothing -> 0.25;
    # LONG vs [BRIEF, LONG] -> a loss and a tie, 0.25. Own picks beat both others: 1.0.
    assert table["short"] == {"short": 1.0, "lists": 0.25}
    # LISTS judging SHORT's picks: BRIEF vs [LONG, LISTED] -> a tie and a loss, 0.25;
    # prompt 2 all tie -> 0.5. Own: LISTED beats both (1.0), then all ties (0.5).
    assert table["lists"] == {"short": 0.375, "lists": 0.75}
    assert "| short | 1.000 | 0.250 | +0.750 |" in best_of_base.report(table)


def test_eval_trained_reuses_a_runs_base_answers_only_for_the_same_heldout_prompts(tmp_path):
    from bench.eval_trained import reused_base

    path = tmp_path / "answers.json"
    path.write_text(json.dumps({"heldout": ["a?", "b?"], "base": [["A1", "A2"], ["B1", "B2"]],
                                "personal": {}}))
    assert reused_base(path, ["a?", "b?"]) == [["A1", "A2"], ["B1", "B2"]]
    assert reused_base(None, ["a?", "b?"]) is None
    with pytest.raises(SystemExit, match="held-out prompts"):
        reused_base(path, ["b?", "a?"])
    path.write_text("{}")        # a --feedback-only run's answers.json
    with pytest.raises(SystemExit, match="no base answers"):
        reused_base(path, ["a?", "b?"])


def test_eval_trained_combines_separately_trained_users_into_one_head_to_head(tmp_path):
    # Two evaluations of users trained in separate data dirs, on the same held-out prompts
    # (equal base answers): combined, each persona's own adapter is judged against the other's.
    from bench.eval_trained import main

    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "short.toml").write_text('name = "short"\ntemperature = 0.0\nthumbs_up_at = 0.0'
                                         '\nthumbs_down_at = -1.0\n[utility]\nwords = -1.0\n')
    (personas / "lists.toml").write_text('name = "lists"\ntemperature = 0.0\nthumbs_up_at = 0.0'
                                         '\nthumbs_down_at = -1.0\n[utility]\nhas_bullets = 1.0\n')
    base = [[LONG], [LONG]]
    paths = []
    for user, persona, answers in (("short-explore-on", "short", [[BRIEF], [BRIEF]]),
                                   ("lists-explore-on", "lists", [[LISTED], [LISTED]])):
        path = tmp_path / f"{persona}.json"
        path.write_text(json.dumps({"users": {user: {"current_version": 1}}, "heldout": 2,
                                    "answers": {"base": base, persona: answers}}))
        paths.append(path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}?"}) + "\n" for i in range(6)))
    args = ["--personas", str(personas), "--prompts", str(prompts), "--heldout", "2",
            "--out", str(tmp_path / "out")]
    assert main(args + ["--combine", str(paths[0]), "--combine", str(paths[1])]) == 0
    scores = json.loads((tmp_path / "out" / "results.json").read_text())["scores"]
    assert scores["head_to_head"] == {"short": {"lists": 1.0}, "lists": {"short": 1.0}}
    assert scores["personas"]["lists"]["win_rate"] == 1.0
    # Another split's evaluation (its base answered other prompts) is refused, not mixed in.
    other = json.loads(paths[1].read_text())
    other["answers"]["base"] = [[BRIEF], [LONG]]
    paths[1].write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="base answers"):
        main(args + ["--combine", str(paths[0]), "--combine", str(paths[1])])


def test_dpo_variant_parses_typed_overrides():
    from bench.dpo_variants import parse_variant

    assert parse_variant("plain:") == ("plain", {})
    assert parse_variant("nll:dpo_nll_weight=1.0,dpo_epochs=3") == (
        "nll", {"dpo_nll_weight": 1.0, "dpo_epochs": 3})
    name, overrides = parse_variant("x:flag=true")
    assert overrides == {"flag": True}
    # numbers in any spelling; anything else (an adapter folder) stays a string
    assert parse_variant("y:lr=1e-3,safety_dpo_pairs=32,adapter=/tmp/a/1")[1] == {
        "lr": 0.001, "safety_dpo_pairs": 32, "adapter": "/tmp/a/1"}


def test_dpo_pick_reads_a_phrase_personas_any_share_or_a_single_feature():
    from bench.dpo_pick import _liked

    assert _liked({"phrase:in short": 0.5, "phrase:overall": 0.1, "any": 0.55}) == 0.55
    assert _liked({"has_bullets": 0.69}) == 0.69
    assert _liked({}) is None       # concise likes no feature, only brevity


def test_dpo_pick_paired_gain_and_its_error_bar():
    from bench.dpo_pick import paired_gain

    mean, se = paired_gain([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    assert mean == 1.0 and se == 0.0
    mean, se = paired_gain([2.0, -2.0], [0.0, 0.0])
    assert mean == 0.0 and se == 2.0
    assert paired_gain([5.0], [0.0]) == (5.0, float("inf"))    # one prompt: no error bar


def test_safety_frontier_reads_variants_with_floor_figures_first_seen_first(tmp_path):
    from bench.safety_frontier import main, points

    def variant(win: float, liked: float, harmless: float, passed: bool) -> dict:
        return {"win_rate": win, "liked_share": {"any": liked},
                "liked_share_base": {"any": 0.06}, "words": 50, "overrides": {},
                "floor": {"base": {"harmless_score": 0.37}, "passed": passed,
                          "candidate": {"harmless_score": harmless}}}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"users": {"u": {"variants": {
        "nll": variant(1.0, 0.69, -0.66, False), "safe": variant(0.8, 0.5, 0.3, True),
        "no_win": variant(0.6, 0.5, 0.3, True)}}}}))   # the share, but not the win rate
    b.write_text(json.dumps({"users": {"u": {"variants": {
        "nll": variant(0.5, 0.1, 0.9, True),
        "trained": {**variant(0.6, 0.2, 0.2, True), "floor": None}}}}}))
    rows, base = points([a, b], "u")
    assert base == 0.37 and [r["variant"] for r in rows] == ["nll", "safe", "no_win"]
    assert rows[0]["harmless"] == -0.66                     # a.json's nll, not b.json's
    assert main(["--user", "u", "--variants", str(a), "--variants", str(b),
                 "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "frontier.json").read_text())
    assert result["both"] == ["safe"] and (tmp_path / "out" / "frontier.png").exists()
