"""Cross-request batching: requests waiting together decode as one batch, with the same
answers as alone, each row on its own adapter, length and sampling settings."""

import threading

import pytest
import torch

from assistant.engine import AdapterRef, Engine, GenRequest
from feedback_store.errors import ModelError
from tests.conftest import make_tiny_model
from tests.test_routing import save_random_adapter

PROMPTS = ["Hi.", "Tell me about cats and why they sleep so much during the day.",
           "What is the capital of France?"]


def sharp_tiny_model(tokenizer):
    """The tiny random Llama with large weights, so that its next token depends on the whole
    prompt (at the default init it depends on little more than the last token, and could
    not tell a padding bug from a correct batch)."""
    model = make_tiny_model(tokenizer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("proj.weight"):
                param.normal_(0, 0.25)
    return model


@pytest.fixture
def eng(tokenizer):
    engine = Engine(sharp_tiny_model(tokenizer), tokenizer, "tiny", context_tokens=512,
                    cache_size=4, max_batch_rows=8)
    yield engine
    engine.close()


@pytest.fixture
def refs(tokenizer, tmp_path):
    out = []
    for user, seed in ((1, 1), (2, 2)):
        save_random_adapter(tokenizer, tmp_path / f"u{user}", seed=seed)
        out.append(AdapterRef(user, 1, tmp_path / f"u{user}"))
    return out


def request(prompt: str, adapter=None, **kw) -> GenRequest:
    kw = {"temperature": 0, "max_tokens": 10, **kw}
    return GenRequest(messages=[{"role": "user", "content": prompt}], adapter=adapter, **kw)


def hold(eng: Engine) -> threading.Event:
    """Hold the generation thread until the returned event is set. Waits until the hold has
    begun: a decode loop that just resolved a request may still be running, and would admit
    requests submitted meanwhile one by one."""
    gate, held = threading.Event(), threading.Event()
    eng._thread.submit(lambda: (held.set(), gate.wait()))
    assert held.wait(timeout=120)
    return gate


def together(eng: Engine, reqs: list[GenRequest]) -> list:
    """Submit every request while the generation thread is held, so they queue up."""
    gate = hold(eng)
    futures = [eng.submit(r) for r in reqs]
    gate.set()
    return [f.result(timeout=120) for f in futures]


def test_batched_answers_equal_answers_alone(eng, refs):
    reqs = [request(PROMPTS[0]), request(PROMPTS[1], refs[0]), request(PROMPTS[2], refs[1]),
            request(PROMPTS[1], refs[1])]
    alone = [eng.generate_sync(r).candidates[0] for r in reqs]
    batches = eng.stats["batches"]
    batched = [r.candidates[0] for r in together(eng, reqs)]
    assert eng.stats["batches"] == batches + 1
    assert [c.tokens for c in batched] == [c.tokens for c in alone]
    assert [c.text for c in batched] == [c.text for c in alone]
    # the adapters really route: the same prompt differs between the two users' adapters
    assert alone[1].tokens != alone[3].tokens


def test_rows_end_at_their_own_max_tokens(eng, tokenizer):
    eng.eos_ids = []        # a random model may emit EOS early; here only the cap may end
    short, long = together(eng, [request(PROMPTS[1], max_tokens=3),
                                 request(PROMPTS[1], max_tokens=9)])
    assert len(short.candidates[0].tokens) == 3 and short.candidates[0].finish_reason == "length"
    assert len(long.candidates[0].tokens) == 9
    assert long.candidates[0].tokens[:3] == short.candidates[0].tokens


def test_batch_is_capped_in_rows_and_keeps_order(eng):
    eng.max_batch_rows = 4
    results = together(eng, [request(p, n=2, temperature=0.7) for p in PROMPTS])
    assert [len(r.candidates) for r in results] == [2, 2, 2]
    assert eng.stats["batches"] == 2 and eng.stats["rows"] == 6


def test_one_bad_adapter_fails_only_its_request(eng, refs, tmp_path):
    missing = AdapterRef(3, 1, tmp_path / "nowhere")
    gate = hold(eng)
    good, bad = eng.submit(request(PROMPTS[0], refs[0])), eng.submit(request(PROMPTS[0], missing))
    gate.set()
    assert good.result(timeout=120).candidates[0].tokens
    with pytest.raises(ModelError, match="u3v1"):
        bad.result(timeout=120)


def test_two_versions_of_one_user_never_share_a_batch(eng, refs):
    newer = AdapterRef(refs[0].user_id, 2, refs[1].path)
    first, second = together(eng, [request(PROMPTS[0], refs[0]), request(PROMPTS[0], newer)])
    assert (first.adapter, second.adapter) == (refs[0], newer)
    assert eng.stats["batches"] == 2
    assert list(eng.loaded) == [newer.name]


def test_a_seeded_request_gives_the_same_answers_alone_and_in_any_batch(eng, refs):
    seeded = request(PROMPTS[1], refs[0], temperature=1.0, n=2, seed=7, max_tokens=12)
    alone = [c.tokens for c in eng.generate_sync(seeded).candidates]
    batched = together(eng, [request(PROMPTS[0], temperature=1.0, n=3), seeded,
                             request(PROMPTS[2], refs[1], temperature=0.5)])[1]
    assert [c.tokens for c in batched.candidates] == alone
    assert alone[0] != alone[1]               # the candidates of one request still differ
    other = eng.generate_sync(request(PROMPTS[1], refs[0], temperature=1.0, n=2, seed=8,
                                      max_tokens=12))
    assert [c.tokens for c in other.candidates] != alone


def test_presence_penalty_counts_only_each_rows_own_answer(eng):
    # A huge negative penalty forces every token after the first to be one the answer
    # already has, so each answer is its first token repeated. The rows' prompts differ in
    # length: counting from the wrong offset (prompt, padding, another row) would let
    # other tokens through.
    plain = [eng.generate_sync(request(p, max_tokens=12)).candidates[0].tokens
             for p in PROMPTS[:2]]
    assert all(len(set(tokens)) > 1 for tokens in plain)
    forced = together(eng, [request(p, max_tokens=12, presence_penalty=-1e4)
                            for p in PROMPTS[:2]])
    for result, tokens in zip(forced, plain, strict=True):
        assert result.candidates[0].tokens == [tokens[0]] * 12
