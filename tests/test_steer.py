"""Steered answers (assistant/steer.py, assistant/arms.py): an answer opening the model
continues, a closing cue where the answer would end, arm entries parsed in one place."""

import httpx
import pytest

from assistant import explore as ex
from assistant.arms import ArmError, parse_arm, parse_arms
from assistant.config import load_config
from assistant.engine import Engine, GenRequest
from assistant.steer import OPENING_MIN_CONTINUATION, Steering, opening_ids
from feedback_store.errors import ConfigError
from tests.conftest import ROOT, make_tiny_model

Q = [{"role": "user", "content": "Tell me about rivers"}]


def engine(tokenizer) -> Engine:
    return Engine(make_tiny_model(tokenizer), tokenizer, "tiny", context_tokens=512)


def greedy_continuation(eng: Engine, prompt: list[int], k: int) -> list[int]:
    """k greedy tokens after `prompt`, by the model alone (no engine)."""
    import torch

    with torch.inference_mode():
        out = eng.model.generate(torch.tensor([prompt]), max_new_tokens=k, do_sample=False,
                                 attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 eos_token_id=None, pad_token_id=eng.pad_id)
    return out[0, len(prompt):].tolist()


def test_opening_is_the_answers_start_and_the_model_continues_after_it(tokenizer):
    eng = engine(tokenizer)
    req = GenRequest(messages=Q, temperature=0, max_tokens=12, opening="Great question! ")
    res = eng.generate_sync(req)
    cand = res.candidates[0]
    opened = opening_ids(tokenizer, "Great question! ")
    # The opening is in the prompt (its KV prefilled), the answer shows it first...
    assert res.prompt_tokens == len(eng.render(Q, 12)) + len(opened)
    assert cand.text.startswith("Great question!")
    assert cand.text == "Great question!" + tokenizer.decode(cand.tokens)
    # ...and what follows is the model's continuation of template + opening, not an answer
    # generated without it and pasted after the opening.
    prompt = eng.render(Q, 12) + opened
    assert cand.tokens == greedy_continuation(eng, prompt, len(cand.tokens))
    plain = eng.generate_sync(GenRequest(messages=Q, temperature=0, max_tokens=12))
    assert plain.candidates[0].tokens[:4] != cand.tokens[:4]
    # The opening counts toward max_tokens: the answer is no longer than the others.
    assert cand.finish_reason != "length" or len(cand.tokens) + len(opened) == 12
    eng.close()


def test_an_opening_is_continued_not_ended_at_once(tokenizer):
    """A model whose likeliest token after the opening is end of sequence still writes
    OPENING_MIN_CONTINUATION tokens (an answer that is only "Certainly." says nothing);
    after those, or without an opening, it may end as before."""
    eng = engine(tokenizer)
    opening = "Certainly."
    prompt = eng.render(Q, 20) + opening_ids(tokenizer, opening)
    first = greedy_continuation(eng, prompt, 1)[0]
    eng.eos_ids = [*eng.eos_ids, first]             # the model now "wants" to stop here
    opened = eng.generate_sync(GenRequest(messages=Q, temperature=0, max_tokens=20,
                                          opening=opening)).candidates[0]
    assert len(opened.tokens) >= OPENING_MIN_CONTINUATION
    assert first not in opened.tokens[:OPENING_MIN_CONTINUATION]
    assert opened.text.startswith(opening) and len(opened.text) > len(opening)
    plain_prompt = eng.render(Q, 20)
    eng.eos_ids = [*eng.eos_ids, greedy_continuation(eng, plain_prompt, 1)[0]]
    plain = eng.generate_sync(GenRequest(messages=Q, temperature=0, max_tokens=20))
    assert plain.candidates[0].tokens == [] and plain.candidates[0].finish_reason == "stop"
    eng.close()


def test_rows_with_different_openings_share_one_batch(tokenizer):
    eng = engine(tokenizer)
    openings = ["Great question!", "For example,", "", "Certainly."]
    reqs = [GenRequest(messages=Q, temperature=0.9, max_tokens=10, seed=3, opening=o)
            for o in openings]
    batch_before = eng.stats["batches"]
    futures = [eng.submit(r) for r in reqs]          # submitted together: decoded together
    together = [f.result().candidates[0] for f in futures]
    assert eng.stats["batches"] - batch_before <= 2
    for opening, req, cand in zip(openings, reqs, together, strict=True):
        assert cand.text.startswith(opening)
        alone = eng.generate_sync(req).candidates[0]   # a seeded row ignores its batch
        assert alone.tokens == cand.tokens and alone.text == cand.text
    # Each row continued its own opening (same seed, same question: only the opening differs).
    assert len({tuple(c.tokens) for c in together}) == 4
    eng.close()


def test_closing_cue_is_fed_where_the_answer_would_end_and_the_model_finishes_it(tokenizer):
    eng = engine(tokenizer)
    cue = "\n\nIn short,"
    cue_ids = tokenizer(cue, add_special_tokens=False)["input_ids"]
    plain = eng.generate_sync(GenRequest(messages=Q, temperature=0.9, max_tokens=40, seed=1))
    closed = eng.generate_sync(GenRequest(messages=Q, temperature=0.9, max_tokens=40, seed=1,
                                          closing=cue)).candidates[0]
    steer = Steering(tokenizer, "", cue, 40, set(eng.eos_ids))
    tokens = plain.candidates[0].tokens
    # Where it would end: its end of sequence, a sentence's end late in the budget, or the
    # last moment that leaves room for the cue and a few words.
    at = next((n for n in range(len(tokens)) if steer.closes(tokens[n], tokens[:n])),
              len(tokens))
    assert steer.close_at <= at <= steer.close_by or at == len(tokens)
    # The same answer up to there, then the cue, then the model's own tokens.
    assert closed.tokens[:at] == tokens[:at]
    assert closed.tokens[at:at + len(cue_ids)] == cue_ids
    assert len(closed.tokens) > at + len(cue_ids) and len(closed.tokens) <= 40
    assert cue in closed.text and closed.text == tokenizer.decode(closed.tokens)
    eng.close()


def test_steering_closes_at_end_of_sequence_once(tokenizer):
    eos = {0}
    steer = Steering(tokenizer, "", "\n\nWhat", 100, eos)
    cue = steer.closing_ids
    assert steer.take(0, 5, [5]) == 5                   # mid-answer: the sampled token
    taken = [steer.take(0, 0, [5])] + [steer.take(0, 9, [5] * (2 + i))
                                       for i in range(len(cue) - 1)]
    assert taken == cue                                 # end of sequence -> the cue instead
    assert steer.take(0, 0, [5] * 10) == 0              # the closing's own end is the end
    assert steer.take(1, 7, [5]) == 7                   # each candidate has its own closing
    assert Steering(tokenizer, "", "", 100, eos).take(0, 0, [5]) == 0   # no closing: as is


def test_a_long_answer_is_closed_after_a_sentence_not_inside_one(tokenizer):
    steer = Steering(tokenizer, "", "\n\nIn short,", 100, {0})
    word, stop = (tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" word", "."))
    late = [word] * steer.close_at
    assert not steer.closes(word, late)                 # late, but inside a sentence
    assert steer.closes(word, [*late, stop])            # late, after a full stop
    assert not steer.closes(word, [word] * 10 + [stop])   # early: the answer goes on
    assert steer.closes(word, [word] * steer.close_by)  # the last moment with room left


def test_pool_requests_carry_each_arms_opening_and_closing():
    arms = parse_arms(("tone | Be upbeat! | Great day! | opening: Great question!",
                       "sum | Summarize. | closing: In short,", "plain | Say it plainly."))
    slots = [ex.Slot("personal", None, 0.7)] + [ex.Slot("arm", None, 0.7, a) for a in arms]
    reqs = ex.pool_requests(GenRequest(messages=Q, n=2, seed=1), slots, "Q?")
    assert [(r.opening, r.closing) for r in reqs] == [
        ("", ""), ("Great question!", ""), ("", "\n\nIn short,"), ("", "")]
    assert all(r.messages[-1] == Q[0] for r in reqs)     # the visible turn is unchanged


# ---- the arm format ------------------------------------------------------------------------

def test_parse_arm_reads_keyed_fields_in_any_order_and_old_entries_stay_valid():
    old = parse_arm("tone | Be upbeat! | Great question! It is.")
    assert (old.demo, old.opening, old.closing) == ("Great question! It is.", "", "")
    arm = parse_arm("sum | Summarize. | closing: In short, | Demo: it works. | opening: So,")
    assert (arm.demo, arm.opening, arm.closing) == ("Demo: it works.", "So,", "In short,")
    assert arm.closing_cue == "\n\nIn short," and parse_arm("a | b").closing_cue == ""


@pytest.mark.parametrize("entry, field", [
    ("two words | x", "name"),
    ("tone", "instruction"),
    ("tone |  ", "instruction"),
    ("tone | x | opening:  ", "opening"),
    ("tone | x | closing: a | closing: b", "closing"),
    ("tone | x | demo one | demo two", "demonstration"),
])
def test_bad_arm_names_the_field(entry, field):
    with pytest.raises(ArmError) as info:
        parse_arm(entry)
    assert info.value.field == field and str(info.value).startswith(f"{field}:")


def test_bad_arm_in_config_names_the_setting_and_the_field(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[explore]\narms = ["tone | Be upbeat! | opening: "]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "explore.arms" in str(info.value) and "opening: must not be empty" in str(info.value)
    path.write_text('[explore]\narms = ["a | x", "a | y"]\n')
    with pytest.raises(ConfigError, match="explore.arms.*name.*used by two arms"):
        load_config(path, env={})


def test_shipped_arms_parse_and_are_steered():
    arms = parse_arms(load_config(ROOT / "config.toml", env={}).explore.arms)
    assert arms and all(a.opening or a.closing for a in arms)


# ---- what is stored and trained on ---------------------------------------------------------

@pytest.fixture
def arm_server(tmp_path, tokenizer):
    from tests.conftest import start_server, tiny_engine

    eng = tiny_engine(tokenizer)
    # Pool 5 with the shipped sources: the user's answer and up to two style arms.
    server, thread, live = start_server(tmp_path / "data", eng, ASSISTANT_EXPLORE_ENABLED="true",
                                        ASSISTANT_EXPLORE_POOL="5")
    yield live
    server.should_exit = True
    thread.join(timeout=10)
    eng.close()


def test_training_data_is_the_shown_steered_answer(arm_server):
    live = arm_server
    key = live.add_user("ann")
    arms = {a.name: a for a in parse_arms(live.state.config.explore.arms)}
    for seed in range(8):
        r = httpx.post(f"{live.url}/api/chat", headers=live.headers(key), timeout=120,
                       json={"content": Q[0]["content"], "max_tokens": 16, "n": 2,
                             "seed": seed, "explore": "random"})
        cands = r.json()["candidates"]
        if any(c["source"] == "arm" for c in cands):
            break
    shown = [c for c in cands if c["source"] == "arm"]
    assert shown
    for cand in shown:
        arm = arms[cand["arm"]]
        assert cand["content"].startswith(arm.opening)
        assert arm.closing_cue in cand["content"]
    httpx.post(f"{live.url}/api/comparisons", headers=live.headers(key),
               json={"message_ids": [c["id"] for c in cands], "choice": "a"}
               ).raise_for_status()
    export = httpx.get(f"{live.url}/api/me/export", headers=live.headers(key)).json()
    row = export["training_data"]["preference"][0]
    assert row["prompt"] == Q                       # the visible prompt: no instruction
    assert {row["chosen"][0]["content"], row["rejected"][0]["content"]} == {
        c["content"] for c in cands}                # the shown text, opening included
