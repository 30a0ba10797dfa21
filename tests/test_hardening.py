"""Bad input on the HTTP side gets a clear 4xx, never a 500 (issue 13, items 2-4, 8, 13, 14).

One tiny-model server for the module (each test makes its own users); the rate limit has its
own server, since the limit is a server setting.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading

import httpx
import pytest

from tests.conftest import start_server, tiny_engine

BIG = 2**63                 # the first integer SQLite cannot store
TOO_BIG = (2**63, 2**64, -(2**63) - 1)
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def live(tmp_path_factory, tokenizer):
    engine = tiny_engine(tokenizer)
    server, thread, live = start_server(tmp_path_factory.mktemp("hardening") / "data", engine)
    yield live
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()


_names = iter(range(10**6))


def new_user(live) -> tuple[int, str]:
    name = f"u{next(_names)}"
    key = live.add_user(name)
    me = httpx.get(f"{live.url}/api/me", headers=live.headers(key)).json()
    return me["id"], key


def call(live, method: str, path: str, key: str, json=None) -> httpx.Response:
    return httpx.request(method, live.url + path, json=json, headers=live.headers(key),
                         timeout=60)


def detail(r: httpx.Response) -> str:
    body = r.json()
    return body["error"]["message"] if "error" in body else body["detail"]


# ---- item 3: a non-ASCII bearer key -----------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/conversations", "/admin/users", "/v1/models"])
def test_non_ascii_bearer_key_is_401_not_500(live, path):
    # hmac.compare_digest refuses non-ASCII str; the header arrives as latin-1 text.
    for raw in ("Bearer ключ".encode(), b"Bearer \xff\xfe", "Bearer pa-é".encode("latin-1")):
        r = httpx.get(live.url + path, headers={"Authorization": raw})
        assert r.status_code == 401, (raw, r.text)


# ---- item 4: ids beyond SQLite's integers -----------------------------------------------------

def test_out_of_range_ids_in_bodies_are_400_naming_the_field(live):
    uid, key = new_user(live)
    admin = live.admin_key
    for value in TOO_BIG:
        for body, field in (({"content": "hi", "conversation_id": value}, "conversation_id"),
                            ({"regenerate": value}, "regenerate")):
            r = call(live, "POST", "/api/chat", key, body)
            assert r.status_code == 400 and detail(r).startswith(f"{field}:"), r.text
        r = call(live, "POST", f"/admin/users/{uid}/rollback", admin, {"version": value})
        assert r.status_code == 400 and detail(r).startswith("version:"), r.text
        r = call(live, "GET", f"/admin/runs?user_id={value}", admin)
        assert r.status_code == 400 and detail(r).startswith("user_id:"), r.text


def int_routes(app) -> list[tuple[str, str]]:
    """(method, path template) of every route with an int path parameter, from the app."""
    return [(method, route.path) for route in app.routes
            if re.search(r"{\w+:int}", route.path)
            for method in sorted(getattr(route, "methods", ()))
            if method not in ("HEAD", "OPTIONS")]


def test_every_int_path_parameter_is_range_checked(live):
    """Walks the app's routes, so a route added later is covered without editing this test."""
    routes = int_routes(live.app)
    assert len(routes) >= 10     # conversations, messages, thumbs, users, runs, versions...
    for method, template in routes:
        names = re.findall(r"{(\w+):int}", template)
        for value in TOO_BIG:
            path = re.sub(r"{\w+:int}", str(value), template)
            r = call(live, method, path, live.admin_key, json={} if method != "GET" else None)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert detail(r).startswith(f"{names[0]}:"), (path, r.text)


# ---- item 13: strict types for model and stream -----------------------------------------------

@pytest.mark.parametrize("body, field", [
    ({"content": "hi", "model": []}, "model"),
    ({"content": "hi", "model": ""}, "model"),
    ({"content": "hi", "model": 0}, "model"),
    ({"content": "hi", "stream": "x"}, "stream"),
    ({"content": "hi", "stream": "false"}, "stream"),
    ({"content": "hi", "stream": 1}, "stream"),
])
def test_native_chat_rejects_wrong_model_and_stream_types(live, body, field):
    _, key = new_user(live)
    r = call(live, "POST", "/api/chat", key, {**body, "max_tokens": 2})
    assert r.status_code == 400 and detail(r).startswith(f"{field}:"), r.text


@pytest.mark.parametrize("extra, field", [
    ({"model": []}, "model"), ({"model": ""}, "model"), ({"model": None}, "model"),
    ({"stream": "x"}, "stream"), ({"stream": 0}, "stream"), ({"stream": ""}, "stream"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
])
def test_openai_rejects_wrong_model_and_stream_types(live, extra, field):
    _, key = new_user(live)
    r = call(live, "POST", "/v1/chat/completions", key,
             {"model": "base", "messages": HI, "max_tokens": 2, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field, r.text


# ---- item 2: request caps ---------------------------------------------------------------------

def test_too_many_messages_is_413_naming_the_limit(live):
    _, key = new_user(live)
    limit = live.config.server.max_messages
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x"}
             for i in range(limit + 1)]
    r = call(live, "POST", "/v1/chat/completions", key,
             {"model": "base", "messages": turns, "max_tokens": 2})
    assert r.status_code == 413, r.text
    assert "server.max_messages" in detail(r) and str(limit) in detail(r)
    ok = call(live, "POST", "/v1/chat/completions", key,
              {"model": "base", "messages": turns[:limit - 1], "max_tokens": 2})
    assert ok.status_code == 200, ok.text


def test_too_many_characters_is_413_naming_the_limit(live):
    """The issue's request (101 messages of 8,000 characters) is refused before it is stored
    or rendered: it once stalled every other user for 38 s."""
    _, key = new_user(live)
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 1600}
             for i in range(101)]
    r = call(live, "POST", "/v1/chat/completions", key,
             {"model": "base", "messages": turns, "max_tokens": 2})
    assert r.status_code == 413, r.text
    limit = live.config.server.max_request_chars
    assert "server.max_request_chars" in detail(r) and str(limit) in detail(r)
    listed = httpx.get(f"{live.url}/api/conversations", headers=live.headers(key)).json()
    assert listed == []                         # nothing was stored


def test_trim_prompt_keeps_system_and_last_turn_and_starts_with_the_user():
    from assistant.chat import trim_prompt

    system = {"role": "system", "content": "be brief"}
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:04d}"}
             for i in range(21)]                # 21 turns, 4 characters each, ends on a user
    assert trim_prompt([system, *turns], 100, 10_000) == [system, *turns]
    kept = trim_prompt([system, *turns], 6, 10_000)
    assert kept[0] == system and kept[-1] == turns[-1] and kept[1]["role"] == "user"
    assert len(kept) <= 6
    by_chars = trim_prompt([system, *turns], 100, len("be brief") + 4 * 5)
    assert by_chars == [system, *turns[-5:]]
    huge = {"role": "user", "content": "y" * 50}
    assert trim_prompt([system, huge], 100, 10) == [system, huge]   # the last turn stays


def test_long_stored_conversation_is_trimmed_before_the_engine(live, monkeypatch):
    uid, key = new_user(live)
    seen = []
    engine = live.state.engine
    original = engine.generate

    async def spy(req):
        seen.append(req.messages)
        return await original(req)

    monkeypatch.setattr(engine, "generate", spy)
    config = live.state.config
    monkeypatch.setattr(live.state, "config", dataclasses.replace(
        config, server=dataclasses.replace(config.server, max_messages=4)))
    first = call(live, "POST", "/api/chat", key, {"content": "start", "max_tokens": 1}).json()
    conv = first["conversation_id"]
    for i in range(4):
        r = call(live, "POST", "/api/chat", key,
                 {"content": f"turn {i}", "conversation_id": conv, "max_tokens": 1})
        assert r.status_code == 200, r.text
    # 9 stored messages; the engine got the last 3 (user first), the newest turn last.
    assert len(seen[-1]) <= 4 and seen[-1][0]["role"] == "user"
    assert seen[-1][-1]["content"] == "turn 3"
    assert [m["content"] for m in seen[-1] if m["role"] == "user"] == ["turn 2", "turn 3"]


# ---- item 8: user names ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["alice\n", "bob\r\n", "carol\nX-Evil: 1", "\ndave", "é"])
def test_names_with_newlines_or_non_ascii_are_400(live, name):
    r = call(live, "POST", "/admin/users", live.admin_key, {"name": name})
    assert r.status_code == 400 and "name" in detail(r), r.text


def test_admin_export_works_and_its_header_stays_legal(live):
    uid, key = new_user(live)
    name = httpx.get(f"{live.url}/api/me", headers=live.headers(key)).json()["name"]
    r = call(live, "GET", f"/admin/export?user={name}&format=preference", live.admin_key)
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == \
        f'attachment; filename="{name}-preference.jsonl"'

    # A database from before the check may hold a name ending in a newline.
    def legacy(db) -> None:
        db["users"].update(uid, {"name": "legacy\n"})

    live.state.store.write_sync(legacy)
    r = httpx.get(f"{live.url}/admin/export", params={"user": "legacy\n", "format": "unpaired"},
                  headers=live.headers(live.admin_key))
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == 'attachment; filename="legacy_-unpaired.jsonl"'


# ---- item 13: security headers ------------------------------------------------------------------

def test_every_answer_carries_the_security_headers(live):
    _, key = new_user(live)
    answers = [
        httpx.get(live.url + "/"),
        httpx.get(live.url + "/static/app.js"),
        httpx.get(live.url + "/health"),
        httpx.get(live.url + "/api/conversations"),                    # 401
        httpx.get(live.url + "/nope"),                                 # 404 from the router
        call(live, "GET", "/v1/models", key),
        call(live, "POST", "/v1/chat/completions", key,
             {"model": "base", "messages": HI, "max_tokens": 2, "stream": True}),
        call(live, "POST", "/api/chat", key, {"content": "hi", "max_tokens": 2, "stream": True}),
    ]
    for r in answers:
        h = r.headers
        assert "frame-ancestors 'none'" in h["content-security-policy"], r.url
        assert "script-src 'self'" in h["content-security-policy"]
        assert h["x-frame-options"] == "DENY"
        assert h["x-content-type-options"] == "nosniff"
        assert h["referrer-policy"] == "no-referrer"


# ---- item 9: erasing a user while their answer is generating ------------------------------------

def _hold_generation(live, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Make the next generation wait until `release` is set; `entered` says it started."""
    import asyncio

    entered, release = threading.Event(), threading.Event()
    engine = live.state.engine
    original = engine.generate

    async def held(req):
        entered.set()
        await asyncio.to_thread(release.wait, 30)
        return await original(req)

    monkeypatch.setattr(engine, "generate", held)
    return entered, release


def test_erasing_a_user_mid_answer_is_a_clean_410_and_stores_nothing(live, monkeypatch):
    uid, key = new_user(live)
    entered, release = _hold_generation(live, monkeypatch)
    answer: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: answer.append(
        call(live, "POST", "/api/chat", key, {"content": "hello", "max_tokens": 4})))
    worker.start()
    assert entered.wait(30)
    erased = call(live, "DELETE", f"/admin/users/{uid}", live.admin_key)
    assert erased.status_code == 200, erased.text
    release.set()
    worker.join(60)
    assert answer[0].status_code == 410, answer[0].text
    assert "not stored" in answer[0].json()["detail"]
    rows = live.state.store.write_sync(
        lambda db: db.execute("select count(*) from messages where user_id = ?",
                              [uid]).fetchone()[0])
    assert rows == 0
    monkeypatch.undo()
    _, other = new_user(live)                    # the server goes on serving
    assert call(live, "POST", "/api/chat", other, {"content": "hi", "max_tokens": 2}) \
        .status_code == 200


def test_erasing_a_user_mid_stream_ends_the_stream_with_an_error_event(live, monkeypatch):
    uid, key = new_user(live)
    entered, release = _hold_generation(live, monkeypatch)
    engine = live.state.engine
    original_stream = engine.stream

    async def held_stream(req, on_abandon=None):
        await engine.generate(req)               # waits like the non-streaming path
        async for item in original_stream(req, on_abandon=on_abandon):
            yield item

    monkeypatch.setattr(engine, "stream", held_stream)
    body: list[str] = []
    worker = threading.Thread(target=lambda: body.append(call(
        live, "POST", "/api/chat", key,
        {"content": "hello", "max_tokens": 4, "stream": True}).text))
    worker.start()
    assert entered.wait(30)
    assert call(live, "DELETE", f"/admin/users/{uid}", live.admin_key).status_code == 200
    release.set()
    worker.join(60)
    assert "event: error" in body[0] and '"status": 410' in body[0], body[0]
    assert "event: done" not in body[0]


# ---- item 14: the per-key rate limit ------------------------------------------------------------

def test_rate_limiter_token_bucket():
    from assistant.ratelimit import RateLimiter
    from feedback_store.errors import TooManyRequests

    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limiter.charge("k")
    with pytest.raises(TooManyRequests) as caught:
        limiter.charge("k")
    assert caught.value.retry_after == 1           # Retry-After: assistant/http_errors
    limiter.charge("other")                      # per key
    now[0] += 1.0
    limiter.charge("k")                          # one token back after a second
    off = RateLimiter(per_minute=0, burst=1)
    for _ in range(100):
        off.charge("k")


def test_rate_limit_answers_429_with_retry_after(tmp_path, tokenizer):
    engine = tiny_engine(tokenizer)
    server, thread, live = start_server(tmp_path / "data", engine,
                                        ASSISTANT_SERVER_RATE_LIMIT_PER_MINUTE=2,
                                        ASSISTANT_SERVER_RATE_LIMIT_BURST=3)
    try:
        key = live.add_user("alice")              # the admin key spent one
        codes = [call(live, "GET", "/api/conversations", key).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = call(live, "GET", "/api/conversations", key)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "rate limit" in r.json()["detail"]
        r = call(live, "GET", "/v1/models", key)
        assert r.status_code == 429 and r.headers["retry-after"]
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        other = live.add_user("bob")             # another key has its own bucket
        assert call(live, "GET", "/api/conversations", other).status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()


# ---- issue 15 item 4: the field in 4xx bodies, OpenAI param from the field ------------------

def test_native_error_body_names_the_field(live):
    r = call(live, "POST", "/api/chat", new_user(live)[1], {"content": "hi", "n": 0})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "n" and r.json()["detail"].startswith("n: "), r.text


def test_openai_param_is_the_field_not_a_guess_from_the_message(live, monkeypatch):
    _, key = new_user(live)
    r = call(live, "POST", "/v1/chat/completions", key,
             {"model": "base", "messages": HI + [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].role", r.text

    async def broken(req):
        from feedback_store.errors import ModelError

        raise ModelError("tokenizer: the worker crashed")

    monkeypatch.setattr(live.state.engine, "generate", broken)
    r = call(live, "POST", "/v1/chat/completions", key,
             {"model": "base", "messages": HI, "max_tokens": 2})
    assert r.status_code == 500, r.text
    assert r.json()["error"]["param"] is None, r.text      # "tokenizer" is no request field


# ---- issue 15 item 4: a stream failing after its headers ends with an error event ----------

def _fail_after_one_delta(live, monkeypatch) -> None:
    from assistant.engine import Delta

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
    r = call(live, "POST", "/api/chat", new_user(live)[1],
             {"content": "hi", "max_tokens": 4, "stream": True})
    events = _events(r.text)
    assert [e for e, _ in events] == ["start", "delta", "error"], r.text
    assert events[-1][1]["status"] == 500
    assert events[-1][1]["detail"] == "internal error: RuntimeError"   # no internals shown


def test_openai_stream_sends_an_error_chunk_when_generation_fails(live, monkeypatch):
    _fail_after_one_delta(live, monkeypatch)
    r = call(live, "POST", "/v1/chat/completions", new_user(live)[1],
             {"model": "base", "messages": HI, "max_tokens": 4, "stream": True})
    events = _events(r.text)
    assert events[-1][1]["error"]["type"] == "server_error", r.text
    assert "[DONE]" not in r.text
