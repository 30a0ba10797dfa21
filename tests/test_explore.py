"""Exploration on comparison turns (issue 14): pool plan, arms, selection, provenance."""

from __future__ import annotations

import json
import random

import httpx
import numpy as np
import pytest

from assistant import explore as ex
from assistant.engine import AdapterRef

ARMS = ex.parse_arms(("tone | Be upbeat! | Great question!", "plain | Say it plainly."))


def test_parse_arms_reads_optional_demonstration():
    assert ARMS[0] == ex.Arm("tone", "Be upbeat!", "Great question!")
    assert ARMS[1] == ex.Arm("plain", "Say it plainly.", None)


def test_arm_messages_add_instruction_and_demo_but_keep_the_turns():
    visible = [{"role": "system", "content": "You are terse."},
               {"role": "user", "content": "hi"}]
    msgs = ex.arm_messages(visible, ARMS[0], "Q?")
    assert msgs[0] == {"role": "system", "content": "You are terse.\n\nBe upbeat!"}
    assert msgs[1:3] == [{"role": "user", "content": "Q?"},
                         {"role": "assistant", "content": "Great question!"}]
    assert msgs[3:] == visible[1:]
    assert visible[0]["content"] == "You are terse."          # the visible prompt is untouched
    no_demo = ex.arm_messages(visible[1:], ARMS[1], "Q?")
    assert no_demo == [{"role": "system", "content": "Say it plainly."}, visible[1]]


def test_plan_pool_starts_with_the_users_answer_and_skips_missing_sources():
    mine = AdapterRef(1, 3, "p")
    have = ex.Sources(mine)                  # no previous version, no peers
    slots = ex.plan_pool(5, ("personal", "peer", "previous", "arm", "hot", "base"), have,
                         ARMS, 0.7, 1.1, random.Random(0))
    assert len(slots) == 5 and slots[0] == ex.Slot("personal", mine, 0.7)
    sources = [s.source for s in slots]
    assert "peer" not in sources and "previous" not in sources
    assert {s.arm.name for s in slots if s.source == "arm"} <= {"tone", "plain"}
    hot = [s for s in slots if s.source == "hot"]
    assert hot and hot[0].temperature == 1.1 and hot[0].adapter == mine
    assert {s.adapter for s in slots if s.source == "base"} == {None}


def test_plan_pool_uses_a_peer_adapter_when_there_is_one():
    peer = AdapterRef(9, 1, "q")
    slots = ex.plan_pool(2, ("peer",), ex.Sources(None, peers=(peer,)), [], 0.7, 1.1,
                         random.Random(0))
    assert [(s.source, s.adapter) for s in slots] == [("personal", None), ("peer", peer)]


def test_plan_pool_draws_the_styles_a_user_keeps_choosing():
    # The "tone" arm won 30 of 30 comparisons, "plain" lost 30 of 30: a pool with room for
    # one arm gets "tone" nearly always; with no record either arm comes up.
    record = {"arm:tone": {"won": 30, "lost": 0}, "arm:plain": {"won": 0, "lost": 30}}
    have, src = ex.Sources(AdapterRef(1, 1, "p")), ("personal", "arm")
    names = [ex.plan_pool(2, src, have, ARMS, 0.7, 1.1, random.Random(s), record)[1].arm.name
             for s in range(40)]
    assert names.count("tone") >= 38
    fresh = {ex.plan_pool(2, src, have, ARMS, 0.7, 1.1, random.Random(s))[1].arm.name
             for s in range(40)}
    assert fresh == {"tone", "plain"}


def test_plan_pool_fills_a_source_at_most_as_often_as_it_is_listed():
    have = ex.Sources(AdapterRef(1, 1, "p"), peers=(AdapterRef(2, 1, "a"), AdapterRef(3, 1, "b")))
    for seed in range(20):
        slots = ex.plan_pool(5, ("personal", "arm", "peer", "base"), have, ARMS, 0.7, 1.1,
                             random.Random(seed))
        sources = [s.source for s in slots[1:]]
        assert sources.count("arm") == 1 and sources.count("peer") == 1 and "base" in sources
        assert slots[-1].source == "personal"         # nothing else left: the user's own


def test_contrast_shows_the_users_answer_against_the_top_drawn_sources():
    draws = [0.0, 0.2, 0.9, 0.5]
    assert ex.select(2, "contrast", random.Random(0), draws=draws) == [0, 2]
    assert ex.select(3, "contrast", random.Random(0), draws=draws) == [0, 2, 3]


def test_diversity_shows_the_pair_farthest_apart():
    X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [0.0, 0.2]])
    assert ex.select(2, "diversity", random.Random(0), X) in ([0, 2], [1, 2])
    assert 2 in ex.select(3, "diversity", random.Random(0), X)


def test_random_selection_is_uniform_over_the_pool():
    X = np.zeros((4, 2))
    seen = {tuple(ex.select(2, "random", random.Random(s), X)) for s in range(60)}
    assert len(seen) == 6                      # all C(4, 2) pairs occur


def test_double_thompson_shows_argmaxes_of_two_members():
    # Member 0 likes candidate 1, member 1 likes candidate 3: the two sampled members' tops.
    scores = np.array([[0, 9, 0, 1], [0, 1, 0, 9.0]])
    picks = {tuple(ex.double_thompson(scores, 2, random.Random(s))) for s in range(20)}
    assert picks == {(1, 3)}
    # The third is where the members disagree most about the preference.
    scores3 = np.array([[0, 9, 5, 1, 2], [0, 1, -5, 9, 2.0]])
    assert 2 in ex.double_thompson(scores3, 3, random.Random(0))


CUED = ex.Arm("formal", "Be formal.", None, opening="Certainly.", closing="Any questions?")


@pytest.mark.parametrize("arm, text, says_more", [
    (CUED, "Certainly.", False),                         # ended right after the opening
    (CUED, " Certainly. \n\nAny questions? ", False),  # the two cues and nothing else
    (CUED, "Certainly. Water it weekly.", True),
    (None, "Sure.", True),                               # not an arm: shown as it is
])
def test_an_arm_answer_must_say_more_than_its_cues(arm, text, says_more):
    assert ex.adds_to_its_cues(arm, text) is says_more


def test_bare_cue_answers_are_left_out_of_the_pool_unless_too_few_remain():
    from assistant.engine import Candidate, GenResult
    from assistant.explore_turn import _saying_something
    slots = [ex.Slot("personal", None, 0.7), ex.Slot("arm", None, 0.7, CUED),
             ex.Slot("base", None, 0.7)]
    results = [GenResult([Candidate(0, t)], 5, None)
               for t in ("Water it weekly.", "Certainly.", "Once a week.")]
    kept, kept_results = _saying_something(slots, results, 2)
    assert [s.source for s in kept] == ["personal", "base"]
    assert [r.candidates[0].text for r in kept_results] == ["Water it weekly.", "Once a week."]
    assert _saying_something(slots, results, 3) == (slots, results)


def test_choose_mode_uses_uncertainty_only_with_enough_pairs():
    assert ex.choose_mode("auto", 5, True, 20) == "contrast"
    assert ex.choose_mode("auto", 25, True, 20) == "uncertainty"
    assert ex.choose_mode("auto", 25, False, 20) == "contrast"
    assert ex.choose_mode("random", 0, False, 20) == "random"


# ---- through the API, tiny model ---------------------------------------------------------

@pytest.fixture
def explore_server(tmp_path, tokenizer):
    from conftest import start_server, tiny_engine

    engine = tiny_engine(tokenizer)
    server, thread, live = start_server(tmp_path / "data", engine,
                                        ASSISTANT_EXPLORE_ENABLED="true",
                                        ASSISTANT_EXPLORE_POOL="5")
    yield live
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()


def _chat(live, key, **body):
    return httpx.post(f"{live.url}/api/chat", headers=live.headers(key), timeout=120,
                      json={"content": "Tell me about rivers", "max_tokens": 6, **body})


def test_comparison_turn_generates_a_pool_and_stores_only_what_is_shown(explore_server):
    key = explore_server.add_user("ann")
    engine = explore_server.state.engine
    rows_before = engine.stats["rows"]
    r = _chat(explore_server, key, n=2, seed=5)
    assert r.status_code == 200, r.text
    cands = r.json()["candidates"]
    assert engine.stats["rows"] - rows_before == 5               # the whole pool decoded
    assert len(cands) == 2 and [c["candidate_index"] for c in cands] == [0, 1]
    assert all(c["source"] in ex_sources() and c["selection"] == "contrast" for c in cands)
    assert [c["source"] for c in cands].count("personal") == 1     # anchored on the user's own
    detail = httpx.get(f"{explore_server.url}/api/conversations/{r.json()['conversation_id']}",
                       headers=explore_server.headers(key)).json()
    assert len(detail["turns"][0]["candidates"]) == 2              # hidden ones not stored


def ex_sources() -> set[str]:
    return {"personal", "base", "previous", "hot", "arm", "peer"}


def test_training_rows_use_the_visible_prompt_not_the_style_arm(explore_server):
    key = explore_server.add_user("bob")
    # Every slot after the first is a style arm: whatever is shown, no instruction leaks.
    env_arms = explore_server.state.config.explore.arms
    cands = []
    for seed in range(4):
        cands = _chat(explore_server, key, n=2, seed=seed, explore="random").json()["candidates"]
        if any(c["source"] == "arm" for c in cands):
            break
    assert any(c["source"] == "arm" and c["arm"] for c in cands)
    ids = [c["id"] for c in cands]
    httpx.post(f"{explore_server.url}/api/comparisons", headers=explore_server.headers(key),
               json={"message_ids": ids, "choice": "a"}).raise_for_status()
    export = httpx.get(f"{explore_server.url}/api/me/export",
                       headers=explore_server.headers(key)).json()
    rows = export["training_data"]["preference"]
    assert rows and rows[0]["prompt"] == [{"role": "user", "content": "Tell me about rivers"}]
    dumped = json.dumps(rows)
    assert not any(ex.parse_arms((a,))[0].instruction in dumped for a in env_arms)


def test_plain_chat_and_opted_out_turns_do_not_explore(explore_server):
    key = explore_server.add_user("cy")
    engine = explore_server.state.engine
    before = engine.stats["rows"]
    one = _chat(explore_server, key, n=1).json()["candidates"]
    assert engine.stats["rows"] - before == 1
    assert one[0]["source"] == "personal" or one[0]["source"] == "base"
    assert one[0]["selection"] is None
    before = engine.stats["rows"]
    off = _chat(explore_server, key, n=2, explore=False).json()["candidates"]
    assert engine.stats["rows"] - before == 2 and {c["selection"] for c in off} == {None}


def test_bad_explore_value_is_a_400(explore_server):
    key = explore_server.add_user("dee")
    r = _chat(explore_server, key, n=2, explore="greedy")
    assert r.status_code == 400 and "explore" in r.text


def test_exploring_stream_sends_each_shown_answer(explore_server):
    key = explore_server.add_user("eve")
    with httpx.stream("POST", f"{explore_server.url}/api/chat",
                      headers=explore_server.headers(key), timeout=120,
                      json={"content": "hi", "n": 3, "max_tokens": 5, "stream": True}) as r:
        text = "".join(r.iter_text())
    parsed = [(b.split("\n")[0][7:], json.loads(b.split("\n")[1][6:]))
              for b in text.strip().split("\n\n")]
    done = parsed[-1][1]
    assert parsed[-1][0] == "done" and len(done["candidates"]) == 3
    for cand in done["candidates"]:
        streamed = "".join(p["text"] for k, p in parsed
                           if k == "delta" and p["index"] == cand["candidate_index"])
        assert streamed == cand["content"]


def test_a_user_with_an_ensemble_head_gets_uncertainty_selection(explore_server, tmp_path):
    from adapters.ensemble import fit_ensemble
    from adapters.feature_cache import features_id
    from adapters.features import FEATURE_LAYERS, FEATURE_POOLS

    key = explore_server.add_user("gus")
    state = explore_server.state
    first = _chat(explore_server, key, n=2, seed=1).json()["candidates"]
    assert {c["selection"] for c in first} == {"contrast"}        # no head yet
    uid = first[0]["user_id"]
    rng = np.random.default_rng(0)
    # the tiny model's feature width: layers x pools x 64 hidden (the recipe may change)
    dim = len(FEATURE_LAYERS) * len(FEATURE_POOLS) * 64
    C, R = rng.normal(size=(30, dim)), rng.normal(size=(30, dim))
    folder = tmp_path / "head"
    folder.mkdir()
    fit_ensemble(C, R, np.zeros((0, dim)), np.zeros(0), k=4).save(folder / "ensemble")

    def add_head(db):
        db["reward_heads"].insert({"user_id": uid, "version": 1, "path": str(folder),
                                   "base_id": features_id(state.engine.base_id),
                                   "metrics": json.dumps({"n_pairs": 30}),
                                   "created_at": "now", "published_at": "now"})
    state.store.write_sync(add_head)
    cands = _chat(explore_server, key, n=3, seed=2).json()["candidates"]
    assert len(cands) == 3 and {c["selection"] for c in cands} == {"uncertainty"}
