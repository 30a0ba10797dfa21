"""Continuous batching, prefix reuse and prompt rendering off the generation thread
(the tiny model; speeds are measured by bench/serving.py, not here)."""

import asyncio
import threading

import pytest

from assistant.engine import BASE, AdapterRef, Engine, GenRequest
from tests.test_batching import PROMPTS, hold, request, sharp_tiny_model, together
from tests.test_engine import turns
from tests.test_routing import save_random_adapter


def make(tokenizer, **kw) -> Engine:
    eng = Engine(sharp_tiny_model(tokenizer), tokenizer, "tiny", context_tokens=512,
                 cache_size=4, max_batch_rows=8, **kw)
    eng.eos_ids = []            # only max_tokens ends a row: lengths are known
    return eng


@pytest.fixture
def eng(tokenizer):
    engine = make(tokenizer)
    yield engine
    engine.close()


def start_long(eng: Engine, max_tokens: int = 40):
    """A long request; returns its future, its answer so far and an event set at its first
    token, and records how many rows the batch had at each of its tokens."""
    started, widths = threading.Event(), []

    def emit(delta):
        widths.append(len(eng._rows))
        started.set()

    future = eng.submit(request(PROMPTS[1], max_tokens=max_tokens), emit)
    assert started.wait(timeout=120)
    return future, widths


def test_a_new_request_joins_a_running_batch_and_does_not_wait_for_it(eng):
    alone = [eng.generate_sync(request(p, max_tokens=m)).candidates[0].tokens
             for p, m in ((PROMPTS[1], 40), (PROMPTS[2], 3))]
    long, widths = start_long(eng)
    short = eng.submit(request(PROMPTS[2], max_tokens=3)).result(timeout=120)
    assert not long.done()                      # answered while the long one still runs
    assert short.candidates[0].tokens == alone[1]
    assert long.result(timeout=120).candidates[0].tokens == alone[0]
    assert max(widths) == 2 and widths[-1] == 1     # it joined, then its row left
    assert eng._rows == [] and eng._cache is None


def test_static_mode_admits_no_one_until_the_batch_ends(tokenizer):
    eng = make(tokenizer, continuous=False)
    try:
        long, widths = start_long(eng, max_tokens=20)
        eng.submit(request(PROMPTS[2], max_tokens=3)).result(timeout=120)
        assert long.done() and set(widths) == {1}
    finally:
        eng.close()


def test_a_seeded_request_joining_mid_batch_gives_its_answers_alone(eng):
    seeded = request(PROMPTS[0], temperature=1.0, n=2, seed=11, max_tokens=12)
    alone = [c.tokens for c in eng.generate_sync(seeded).candidates]
    long, _ = start_long(eng)
    joined = eng.submit(seeded).result(timeout=120)
    assert [c.tokens for c in joined.candidates] == alone
    long.result(timeout=120)


def test_rows_of_a_finished_request_leave_while_others_continue(eng):
    together = hold(eng)
    futures = [eng.submit(request(PROMPTS[i], max_tokens=m))
               for i, m in ((0, 2), (1, 30), (2, 5))]
    together.set()
    results = [f.result(timeout=120) for f in futures]
    assert [len(r.candidates[0].tokens) for r in results] == [2, 30, 5]
    alone = eng.generate_sync(request(PROMPTS[1], max_tokens=30)).candidates[0].tokens
    assert results[1].candidates[0].tokens == alone     # compaction kept its KV intact


def test_work_on_the_model_runs_between_two_tokens(eng):
    long, _ = start_long(eng, max_tokens=60)
    seen = asyncio.run(eng.call(lambda: len(eng._rows[0].cand.tokens)))
    assert seen < 60 and not long.done()
    long.result(timeout=120)


def test_cancel_before_the_request_starts(eng):
    long, _ = start_long(eng, max_tokens=20)
    cancel = threading.Event()
    cancel.set()
    eng.max_batch_rows = 1                      # it waits in the queue
    result = eng.submit(request(PROMPTS[0]), cancel=cancel).result(timeout=120)
    assert result.candidates[0].finish_reason == "cancelled"
    assert result.candidates[0].tokens == []
    long.result(timeout=120)



def test_results_say_how_long_the_request_queued_for_rows(eng):
    long, _ = start_long(eng, max_tokens=40)       # long enough to outlast two renders
    joined = eng.submit(request(PROMPTS[2], max_tokens=3)).result(timeout=120)
    assert joined.queued_steps <= 1                  # rows were free: the next boundary
    eng.max_batch_rows = 1                           # now it waits for the long row to end
    waited = eng.submit(request(PROMPTS[0], max_tokens=3)).result(timeout=120)
    first = long.result(timeout=120)
    assert first.queued_steps == 0
    assert 1 <= waited.queued_steps <= 40 and long.done()
    assert waited.queued_ms <= waited.candidates[0].first_token_ms
    assert eng.stats["steps"] >= 40


def test_queued_steps_leave_out_the_steps_that_rendering_overlapped(eng):
    tokens = threading.Condition()
    count = [0]

    def emit(delta):
        with tokens:
            count[0] += 1
            tokens.notify_all()

    long = eng.submit(request(PROMPTS[1], max_tokens=30), emit)
    render = eng.render

    def slow_render(messages, max_new):     # the running row decodes 5 tokens meanwhile
        with tokens:
            seen = count[0]
            assert tokens.wait_for(lambda: count[0] >= seen + 5, timeout=120)
        return render(messages, max_new)

    eng.render = slow_render
    joined = eng.submit(request(PROMPTS[2], max_tokens=3)).result(timeout=120)
    assert not long.done() and joined.queued_steps <= 1
    long.result(timeout=120)


# ---- prefix reuse -----------------------------------------------------------------------

def chat(eng: Engine, n_turns: int, owner: int | None = 1) -> list[list[int]]:
    messages, answers = [], []
    for i in range(n_turns):
        messages.append({"role": "user", "content": f"question {i}: " + "more words " * 20})
        cand = eng.generate_sync(GenRequest(messages=list(messages), temperature=0,
                                            max_tokens=8, owner=owner)).candidates[0]
        messages.append({"role": "assistant", "content": cand.text})
        answers.append(cand.tokens)
    return answers


def test_a_later_turn_reuses_the_earlier_turns_kv_with_the_same_answer(tokenizer):
    fresh, reused = make(tokenizer, prefix_cache_tokens=0), make(tokenizer)
    try:
        assert chat(reused, 3) == chat(fresh, 3)
        assert fresh.stats["prefix_hits"] == 0
        assert reused.stats["prefix_hits"] == 2 and reused.stats["prefix_tokens"] > 100
    finally:
        fresh.close()
        reused.close()


def test_kept_kv_is_reused_only_for_its_owner(eng):
    chat(eng, 1, owner=1)
    chat(eng, 2, owner=2)               # the same first prompt, another user
    chat(eng, 2, owner=None)
    assert eng.stats["prefix_hits"] == 1            # only user 2's own second turn
    eng.forget_user(2)
    assert {p.owner for p in eng._prefixes.values()} == {1}


def test_the_prefix_cache_is_bounded_in_tokens(tokenizer):
    eng = make(tokenizer, prefix_cache_tokens=150)
    try:
        chat(eng, 3)
        assert 0 < sum(len(p.tokens) for p in eng._prefixes.values()) <= 150
    finally:
        eng.close()



def test_prompts_share_the_templates_head_kv_per_adapter_with_the_same_answers(tokenizer,
                                                                               tmp_path):
    # Every prompt without a system message of its own opens with the template's default
    # system prompt: its KV is computed once per adapter, and only the rest is prefilled.
    save_random_adapter(tokenizer, tmp_path / "u1", seed=1)
    v1, v2 = AdapterRef(1, 1, tmp_path / "u1"), AdapterRef(1, 2, tmp_path / "u1")
    plain, shared = make(tokenizer), make(tokenizer)
    plain._head = []                                 # every prompt prefilled whole
    try:
        assert len(shared._head) >= 16
        reqs = [request(p, a) for p in PROMPTS for a in (None, v1)]
        alone = [plain.generate_sync(r).candidates[0].tokens for r in reqs]
        # together: one prefill whose rows' rests differ in length (padding between)
        assert [r.candidates[0].tokens for r in together(shared, reqs)] == alone
        assert shared.stats["head_hits"] == len(reqs) and plain.stats["head_hits"] == 0
        assert set(shared._heads) == {BASE, v1.name}
        shared.generate_sync(request(PROMPTS[0], v2))     # a promotion: the old head goes
        assert set(shared._heads) == {BASE, v2.name}
        own = [{"role": "system", "content": "Answer in French."},
               {"role": "user", "content": PROMPTS[0]}]
        shared.generate_sync(GenRequest(messages=own, max_tokens=3, temperature=0))
        assert shared.stats["head_hits"] == len(reqs) + 1
    finally:
        plain.close()
        shared.close()


# ---- rendering --------------------------------------------------------------------------

def quadratic_render(eng: Engine, messages: list[dict], max_new: int) -> list[int]:
    """The former algorithm: re-render after dropping each exchange (the reference)."""
    budget = max(16, eng.context_tokens - max_new)
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    while True:
        ids = eng._template(system + rest)
        if len(ids) <= budget or len(rest) <= 1:
            return ids[-budget:] if len(ids) > budget else ids
        rest = rest[2:] if len(rest) > 2 else rest[1:]


@pytest.mark.parametrize("context", [120, 300, 700, 2048])
@pytest.mark.parametrize("system", [False, True])
def test_render_keeps_the_same_turns_as_before(eng, context, system):
    eng.context_tokens = context
    messages = ([{"role": "system", "content": "Be brief."}] if system else []) + turns(9)
    messages[3]["content"] = "user"         # a content that also occurs in the template
    assert eng.render(messages, 50) == quadratic_render(eng, messages, 50)


def test_render_is_linear_in_the_history(eng, monkeypatch):
    calls = []
    real = eng._text
    monkeypatch.setattr(eng, "_text", lambda m: (calls.append(len(m)), real(m))[1])
    messages = turns(100)                 # 199 messages, the last few fit
    eng.context_tokens = 400
    ids = eng.render(messages, 50)
    assert len(ids) <= 350 and "question 99" in eng.tokenizer.decode(ids)
    assert len(calls) <= 3                  # was one render per exchange dropped (~100)


def test_prompts_render_off_the_generation_thread(eng, monkeypatch):
    threads = []
    real = eng.render

    def render(messages, max_new):
        threads.append(threading.current_thread().name)
        return real(messages, max_new)

    monkeypatch.setattr(eng, "render", render)

    async def run():
        async for item in eng.stream(request(PROMPTS[0], max_tokens=2)):
            last = item
        return last

    assert len(asyncio.run(run()).candidates[0].tokens) == 2
    assert len(threads) == 1 and threads[0].startswith("render")


def test_prefix_cache_setting_is_validated():
    from assistant.config import load_config
    from feedback_store.errors import ConfigError
    from tests.conftest import ROOT

    assert load_config(ROOT / "config.toml", env={}).model.prefix_cache_tokens > 0
    with pytest.raises(ConfigError, match="model.prefix_cache_tokens"):
        load_config(ROOT / "config.toml", env={"ASSISTANT_MODEL_PREFIX_CACHE_TOKENS": "-1"})
