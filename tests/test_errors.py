"""Errors named by what went wrong, mapped to HTTP in one place (issue 15, item 4).

Domain errors (feedback_store/errors.py) carry a `field` and no status; assistant/http_errors
maps them; the OpenAI error's param is that field; both streams end a failed answer with an
error event; training code raises no HTTP error.
"""

from __future__ import annotations

import json

import httpx
import pytest

from assistant.engine import Delta
from assistant.http_errors import headers_of, status_of
from feedback_store import errors
from feedback_store.errors import (
    AssistantError,
    BadRequest,
    InvalidData,
    ModelError,
    NotFound,
    TooManyRequests,
)
from tests.conftest import start_server, tiny_engine

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def live(tmp_path_factory, tokenizer):
    engine = tiny_engine(tokenizer)
    server, thread, live = start_server(tmp_path_factory.mktemp("errors") / "data", engine)
    yield live
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()


_names = iter(range(10**6))


def new_key(live) -> str:
    return live.add_user(f"e{next(_names)}")


def post(live, path: str, key: str, body: dict) -> httpx.Response:
    return httpx.post(live.url + path, json=body, headers=live.headers(key), timeout=60)


# ---- the domain errors and the one map ---------------------------------------------------------

def test_domain_errors_know_no_http_status():
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, AssistantError)]
    assert len(classes) > 10
    assert not [c.__name__ for c in classes if "status" in vars(c) or "headers" in vars(c)]


def test_field_prefixes_the_message_and_is_kept():
    exc = BadRequest("must be an integer from 1 to 8; got 0", field="n")
    assert str(exc) == "n: must be an integer from 1 to 8; got 0" and exc.field == "n"
    assert BadRequest("no field here").field is None


def test_status_map():
    assert status_of(BadRequest("x")) == 400 and status_of(NotFound("x")) == 404
    assert status_of(TooManyRequests("slow down", 7)) == 429
    assert headers_of(TooManyRequests("slow down", 7)) == {"Retry-After": "7"}
    assert status_of(ModelError("x")) == 500 and status_of(RuntimeError("x")) == 500


def test_learning_code_raises_invalid_data_not_an_http_error(tokenizer):
    from adapters import features

    with pytest.raises(InvalidData) as caught:
        features.render(tokenizer, "not a list of messages", "answer")
    assert not isinstance(caught.value, BadRequest)


# ---- HTTP: field in the body, OpenAI param from the field -------------------------------------

def test_native_error_body_names_the_field(live):
    r = post(live, "/api/chat", new_key(live), {"content": "hi", "n": 0})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "n" and r.json()["detail"].startswith("n: "), r.text


def test_openai_param_is_the_field_not_a_guess_from_the_message(live, monkeypatch):
    key = new_key(live)
    r = post(live, "/v1/chat/completions", key,
             {"model": "base", "messages": HI + [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].role", r.text

    async def broken(req):
        raise ModelError("tokenizer: the worker crashed")

    monkeypatch.setattr(live.state.engine, "generate", broken)
    r = post(live, "/v1/chat/completions", key, {"model": "base", "messages": HI,
                                                 "max_tokens": 2})
    assert r.status_code == 500, r.text
    assert r.json()["error"]["param"] is None, r.text      # "tokenizer" is no request field


# ---- streams: a failure after the headers is an error event -----------------------------------

def _fail_after_one_delta(live, monkeypatch) -> None:
    async def failing(req, on_abandon=None):
        yield Delta(0, "Hel")
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(live.state.engine, "stream", failing)


def _events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines.get("event", "message"), json.loads(lines["data"])
                    if lines["data"] != "[DONE]" else {}))
    return out


def test_native_stream_sends_an_error_event_when_generation_fails(live, monkeypatch):
    _fail_after_one_delta(live, monkeypatch)
    r = post(live, "/api/chat", new_key(live), {"content": "hi", "max_tokens": 4,
                                                "stream": True})
    events = _events(r.text)
    assert [e for e, _ in events] == ["start", "delta", "error"], r.text
    assert events[-1][1]["status"] == 500
    assert events[-1][1]["detail"] == "internal error: RuntimeError"   # no internals shown


def test_openai_stream_sends_an_error_chunk_when_generation_fails(live, monkeypatch):
    _fail_after_one_delta(live, monkeypatch)
    r = post(live, "/v1/chat/completions", new_key(live),
             {"model": "base", "messages": HI, "max_tokens": 4, "stream": True})
    events = _events(r.text)
    assert events[-1][1]["error"]["type"] == "server_error", r.text
    assert "[DONE]" not in r.text
