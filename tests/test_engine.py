"""The generation engine on a tiny model: prompt budget, stop strings, cancellation."""

import threading

from assistant.engine import Engine, GenRequest
from tests.conftest import make_tiny_model


def engine(tokenizer, context=256):
    return Engine(make_tiny_model(tokenizer), tokenizer, "tiny", context_tokens=context)


def turns(k: int) -> list[dict]:
    out = []
    for i in range(k):
        out += [{"role": "user", "content": f"question {i} " + "word " * 30},
                {"role": "assistant", "content": f"answer {i} " + "word " * 30}]
    return out[:-1]


def test_render_drops_oldest_turns_but_keeps_system_and_last(tokenizer):
    eng = engine(tokenizer, context=300)
    messages = [{"role": "system", "content": "Be brief."}] + turns(6)
    ids = eng.render(messages, max_new=50)
    text = tokenizer.decode(ids)
    assert len(ids) <= 250
    assert "Be brief." in text and "question 5" in text and "question 0" not in text


def test_short_history_is_kept_whole(tokenizer):
    eng = engine(tokenizer, context=2048)
    text = tokenizer.decode(eng.render(turns(3), max_new=50))
    assert all(f"question {i}" in text for i in range(3))


def sampled(eng, stop=(), emit=lambda d: None):
    """A fixed-seed sample, so two calls generate the same tokens."""
    import torch

    torch.manual_seed(7)
    req = GenRequest(messages=turns(1), temperature=1.0, max_tokens=16, stop=list(stop))
    return eng.generate_sync(req, emit=emit)


def test_stop_string_truncates_and_is_never_streamed(tokenizer):
    eng = engine(tokenizer)
    text = sampled(eng).candidates[0].text
    k = next(i for i in range(2, len(text) - 3) if text.find(text[i:i + 3]) == i)
    streamed = []
    cut = sampled(eng, stop=[text[k:k + 3]], emit=streamed.append).candidates[0]
    assert cut.text == text[:k] and cut.finish_reason == "stop"
    assert "".join(d.text for d in streamed) == text[:k]


def test_cancel_stops_generation_early(tokenizer):
    eng = engine(tokenizer)
    cancel = threading.Event()
    seen = []

    def emit(delta):
        seen.append(delta)
        cancel.set()

    result = eng.generate_sync(GenRequest(messages=turns(1), max_tokens=50, temperature=0),
                               emit=emit, cancel=cancel)
    cand = result.candidates[0]
    assert cand.finish_reason == "cancelled" and len(cand.tokens) < 5
    assert "".join(d.text for d in seen) == cand.text
