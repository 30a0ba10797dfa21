"""Cross-request batching: requests waiting together decode as one batch, with the same
answers as alone, each row on its own adapter, length and sampling settings."""

import threading

import pytest
import torch

from assistant.engine import AdapterRef, Engine, GenRequest, _RowSampling
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


def together(eng: Engine, reqs: list[GenRequest]) -> list:
    """Submit every request while the generation thread is held, so they queue up."""
    gate = threading.Event()
    eng._thread.submit(gate.wait)
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
    gate = threading.Event()
    eng._thread.submit(gate.wait)
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


def test_row_sampling_filters_each_row_by_its_own_settings():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]] * 3))
    out = _RowSampling([0.0, 1.0, 1.0], [1.0, 0.5, 1.0])(None, logits.clone())
    finite = torch.isfinite(out)
    assert finite.tolist() == [[True, False, False], [True, False, False], [True, True, True]]
    assert torch.allclose(out[2], logits[2])
    hot = _RowSampling([2.0], [1.0])(None, logits[:1].clone())
    assert torch.allclose(hot, logits[:1] / 2)
