"""The web UI in a real browser (Playwright + Debian chromium, headless) against a live server.

Deterministic answers come from replacing the engine's submit with a scripted one
(`scripted_answers`): it streams fixed text through the real streaming path (engine.stream,
SSE, fetch reader), so only the model is fake. Screenshots of every page, light and dark, go
to tests/screenshots/ (gitignored). Every page fails its test on a console error or an uncaught
exception unless the test names the error it expects.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from assistant.engine import Candidate, Delta, GenResult

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "tests" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
WIDE, NARROW = {"width": 1280, "height": 820}, {"width": 390, "height": 844}
TIMEOUT = 20_000


@pytest.fixture(scope="module")
def browser():
    pw = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the UI tests need Debian's chromium")
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def new_page(browser):
    """new_page(viewport, dark=False) -> a page in a fresh context (own localStorage).

    Console errors and uncaught exceptions are collected; at the end of the test each must
    match one of the page's `expected_console` patterns (e.g. the 401 of a wrong key)."""
    pages = []

    def make(viewport=WIDE, dark=False):
        ctx = browser.new_context(viewport=viewport, accept_downloads=True,
                                  color_scheme="dark" if dark else "light")
        ctx.set_default_timeout(TIMEOUT)
        page = ctx.new_page()
        errors, console = [], []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
        page.js_errors, page.console_errors, page.expected_console = errors, console, []
        pages.append((ctx, page))
        return page

    yield make
    problems = []
    for ctx, page in pages:
        problems += page.js_errors
        problems += [m for m in page.console_errors
                     if not any(re.search(p, m) for p in page.expected_console)]
        ctx.close()
    assert problems == [], f"console errors: {problems}"


def settle(page) -> None:
    """Wait until no CSS transition or animation is running (a drawer sliding, a toast)."""
    page.wait_for_function("""() => document.getAnimations()
        .every(a => a.playState !== 'running' || a.effect?.getTiming().iterations === Infinity)""")


def shot(page, name: str, full_page: bool = False) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    settle(page)
    if full_page:         # the page scrolls inside #view: let it grow for the picture
        page.evaluate("""() => { document.querySelector('.shell').style.height = 'auto';
                                 document.querySelector('.view').style.overflow = 'visible'; }""")
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def no_object_object(page) -> None:
    assert "[object Object]" not in page.inner_text("body")


def sign_in(page, live, key: str) -> None:
    page.goto(live.url + "/")
    page.fill("#api-key", key)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#prompt")


def db_rows(live, sql: str, args=()) -> list[dict]:
    con = sqlite3.connect(live.config.db_path)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        con.close()


def wait_rows(live, sql: str, args=(), timeout=10.0) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        rows = db_rows(live, sql, args)
        if rows or time.time() > deadline:
            return rows
        time.sleep(0.1)


def scripted_answers(live, answers: list[str], delay: float = 0.0,
                     hold: threading.Event | None = None) -> None:
    """Make the engine stream `answers[i]` as candidate i, word by word, honouring cancel.
    With `hold`, the stream pauses after its first word until the test sets it, so what a
    page shows mid-stream is checked without racing the stream."""
    engine = live.state.engine

    def generate_sync(req, emit=lambda d: None, cancel=None):
        cancel = cancel or threading.Event()
        cands = []
        for i in range(req.n):
            cand = Candidate(index=i, first_token_ms=1.0)
            for piece in re.findall(r"\S+\s*|\s+", answers[i % len(answers)]):
                if cancel.is_set():
                    cand.finish_reason = "cancelled"
                    break
                emit(Delta(i, piece))
                cand.text += piece
                cand.tokens.append(0)
                if hold is not None:
                    hold.wait(timeout=60)
                if delay:
                    time.sleep(delay)
            cand.finish_reason = cand.finish_reason or "stop"
            cand.total_ms = 5.0
            cands.append(cand)
        return GenResult(cands, 3, req.adapter)

    def submit(req, emit=lambda d: None, cancel=None):     # on the generation thread, as the
        return engine._thread.submit(generate_sync, req, emit, cancel)     # real batches run

    engine.submit = submit


def chat_page(live, new_page, name: str, answers: list[str], viewport: dict,
              delay: float = 0.0):
    """A chat page signed in as a new user `name` whose answers the engine scripts; and
    the user's key."""
    key = live.add_user(name)
    scripted_answers(live, answers, delay=delay)
    page = new_page(viewport)
    sign_in(page, live, key)
    return page, key


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def wait_answer_done(page) -> None:
    page.wait_for_selector(".btn-stop", state="hidden")
    page.wait_for_selector(".live", state="detached")


# ---- tests ----------------------------------------------------------------------------------

def test_sign_in_stream_markdown_and_thumbs(live_server, new_page):
    live = live_server
    key = live.add_user("alice")
    answer = ("Hello **world**, here is *some* code:\n\n```python\nprint('hi')\n```\n\n"
              "- one\n- two\n\nSee [the docs](https://example.org/docs).")
    mid_stream = threading.Event()
    scripted_answers(live, [answer], delay=0.03, hold=mid_stream)
    page = new_page(WIDE)
    page.expected_console = [r"status of 401"]       # the wrong key below

    page.goto(live.url + "/")
    assert page.get_attribute("#api-key", "placeholder").startswith("pa-")
    page.fill("#api-key", "pa-not-a-real-key")
    page.press("#api-key", "Enter")
    page.wait_for_selector("#signin-error:has-text('not accepted')")
    shot(page, "signin-error-1280")
    sign_in(page, live, key)
    assert page.evaluate("localStorage.getItem('assistant.apiKey')") == key
    page.wait_for_selector(".whoami-name:has-text('alice')")
    shot(page, "welcome-1280")

    # Shift+Enter is a newline, not a send.
    page.click("#prompt")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#prompt") == "first line\nsecond line"
    page.keyboard.press("Enter")

    # Tokens show up while the answer is still being generated.
    page.wait_for_selector(".live .md:has-text('Hello')")
    assert page.is_visible(".btn-stop")
    shot(page, "chat-streaming-1280")
    assert "docs" not in page.inner_text(".live .md")
    mid_stream.set()
    wait_answer_done(page)

    answer_el = page.locator(".msg-assistant[data-message-id]")
    assert answer_el.count() == 1
    assert page.inner_text(".msg-user .bubble") == "first line\nsecond line"
    assert answer_el.locator(".md strong").inner_text() == "world"
    assert answer_el.locator(".md em").inner_text() == "some"
    assert answer_el.locator("pre code.language-python").inner_text() == "print('hi')"
    # highlight.js (vendored) colours the code; each block has its own copy button.
    page.wait_for_selector(".msg-assistant pre code.hljs span[class^='hljs-']")
    assert answer_el.locator("pre .code-copy").count() == 1
    assert answer_el.locator(".md li").count() == 2
    link = answer_el.locator(".md a")
    assert link.get_attribute("href") == "https://example.org/docs"
    assert "noopener" in link.get_attribute("rel")
    assert answer_el.locator(".badge").inner_text() == "Base model"
    assert re.match(r"#/c/\d+$", page.evaluate("location.hash"))
    page.wait_for_selector(".conv.active .conv-title:has-text('first line')")
    shot(page, "chat-1280")

    # Thumbs up with a reason chip and a comment; the vote lands in the database. The thumbs
    # stay where they were when the reasons panel opens.
    message_id = int(answer_el.get_attribute("data-message-id"))
    thumb = answer_el.get_by_role("button", name="Good answer (thumbs up)")
    before = thumb.bounding_box()
    thumb.click()
    page.wait_for_selector(".feedback-panel:not([hidden])")
    assert thumb.bounding_box() == before
    answer_el.locator(".chip[data-reason='helpful']").click()
    answer_el.get_by_label("Comment on this answer").fill("nice and short")
    answer_el.get_by_role("button", name="Save comment").click()
    page.wait_for_selector(".feedback-status:has-text('Comment saved')")
    rows = db_rows(live, "select * from thumbs where message_id = ?", [message_id])
    assert len(rows) == 1 and rows[0]["value"] == "up"
    assert "helpful" in json.loads(rows[0]["reasons"])
    assert rows[0]["comment"] == "nice and short"
    shot(page, "chat-feedback-1280")

    # Guidelines are one click away from the feedback control.
    answer_el.get_by_role("button", name="Rating guidelines").first.click()
    page.wait_for_selector("dialog[open] .criterion")
    page.keyboard.press("Escape")

    # After a reload the vote is shown as selected; it can be changed and cleared.
    page.reload()
    up = page.get_by_role("button", name="Good answer (thumbs up)")
    page.wait_for_selector(".thumb-up[aria-pressed='true']")
    page.get_by_role("button", name="Bad answer (thumbs down)").click()
    page.wait_for_selector(".feedback[data-saved='down']")
    rows = db_rows(live, "select value from thumbs where message_id = ?", [message_id])
    assert rows[0]["value"] == "down"
    page.get_by_role("button", name="Clear vote").click()
    page.wait_for_selector(".feedback[data-saved='none']")
    assert db_rows(live, "select * from thumbs where message_id = ?", [message_id]) == []
    assert up.get_attribute("aria-pressed") == "false"

    # Narrow screen: the sidebar is a drawer behind the menu button.
    page.set_viewport_size(NARROW)
    settle(page)
    box = page.locator("#sidebar").bounding_box()
    assert box["x"] + box["width"] <= 0            # off-canvas
    shot(page, "chat-390")
    page.get_by_role("button", name="Open menu").click()
    settle(page)
    assert page.locator("#sidebar").bounding_box()["x"] >= 0
    shot(page, "chat-390-menu")

    # Sign out forgets the key.
    page.click("#sign-out")
    page.wait_for_selector("#api-key")
    assert page.evaluate("localStorage.getItem('assistant.apiKey')") is None


def test_real_model_streams_and_regenerates(live_server, new_page):
    """The tiny random model through the whole stack: answer, then regenerate it."""
    live = live_server
    key = live.add_user("rita")
    engine, real = live.state.engine, live.state.engine.submit

    def short(req, *args, **kwargs):                # 256 random tokens take ~30 s on 2 cores
        req.max_tokens = min(req.max_tokens, 12)
        return real(req, *args, **kwargs)

    engine.submit = short
    page = new_page(WIDE)
    sign_in(page, live, key)
    send(page, "Tell me something")
    page.wait_for_selector(".msg-assistant[data-message-id]")
    first = int(page.get_attribute(".msg-assistant[data-message-id]", "data-message-id"))
    page.get_by_role("button", name="Regenerate answer").click()
    page.wait_for_selector(f".msg-assistant[data-message-id]:not([data-message-id='{first}'])")
    wait_answer_done(page)
    second = int(page.get_attribute(".msg-assistant[data-message-id]", "data-message-id"))
    rows = db_rows(live, "select id, chosen, candidate_group from messages where role = 'assistant'"
                         " order by id")
    assert [r["id"] for r in rows] == [first, second]
    assert rows[0]["candidate_group"] == rows[1]["candidate_group"]
    assert [r["chosen"] for r in rows] == [0, 1]
    # The previous answer stays reachable with the 1/2 switcher...
    assert page.inner_text(".msg-assistant .switcher-n") == "2/2"
    page.get_by_role("button", name="Previous answer", exact=True).click()
    page.wait_for_selector(f".msg-assistant[data-message-id='{first}']")
    assert page.inner_text(".msg-assistant .switcher-n") == "1/2"
    # ...and a regeneration asks whether it was better: "Same" is stored as a tie.
    page.get_by_role("button", name="Same as the previous answer").click()
    page.wait_for_selector(".regen-ask", state="detached")
    comp = wait_rows(live, "select * from comparisons")
    assert len(comp) == 1 and comp[0]["choice"] == "tie"
    assert {comp[0]["message_a"], comp[0]["message_b"]} == {first, second}
    page.wait_for_selector(".verdict-note:has-text('tie')")


def test_stop_keeps_partial_answer(live_server, new_page):
    live = live_server
    long_answer = " ".join(f"word{i}" for i in range(400))
    page, _ = chat_page(live, new_page, "sam", [long_answer], WIDE, delay=0.03)
    send(page, "Go on and on")
    page.wait_for_selector(".live .md:has-text('word3')")
    page.keyboard.press("Escape")                 # Esc stops generation
    page.wait_for_selector(".msg-assistant[data-message-id] .tag:has-text('stopped')")
    rows = db_rows(live, "select content, finish_reason from messages where role = 'assistant'")
    assert len(rows) == 1 and rows[0]["finish_reason"] == "cancelled"
    assert rows[0]["content"].startswith("word0 word1 word2")
    assert "word399" not in rows[0]["content"]
    assert page.is_visible("#prompt") and page.is_hidden(".btn-stop")


def test_compare_then_rank_and_next_turn_follows_choice(live_server, new_page):
    live = live_server
    key = live.add_user("carl")
    scripted_answers(live, ["First candidate: **short** answer.",
                            "Second candidate with a list:\n\n1. alpha\n2. beta",
                            "Third candidate, `code` inside."])
    for viewport, suffix in [(NARROW, "390"), (WIDE, "1280")]:
        page = new_page(viewport)
        sign_in(page, live, key)
        page.get_by_role("button", name=re.compile("^Compare")).click()
        send(page, f"Compare please ({suffix})")
        page.wait_for_selector(".verdict-compare .cand[data-message-id] >> nth=1")
        shot(page, f"compare-{suffix}")
    cands = page.locator(".verdict-compare .cand[data-message-id]")
    a_id, b_id = (int(cands.nth(i).get_attribute("data-message-id")) for i in range(2))
    assert "Second candidate" in cands.nth(1).inner_text()
    page.get_by_role("button", name="B is better").click()
    page.wait_for_selector(".verdict", state="detached")
    shown = page.locator(".msg-assistant[data-message-id]")
    assert int(shown.get_attribute("data-message-id")) == b_id
    assert "Second candidate" in shown.inner_text()
    rows = db_rows(live, "select * from comparisons")
    assert len(rows) == 1 and rows[0]["choice"] == "b"
    assert {rows[0]["message_a"], rows[0]["message_b"]} == {a_id, b_id}

    # Next turn (single mode) follows the chosen candidate.
    page.get_by_role("button", name=re.compile("^Single")).click()
    send(page, "And then?")
    page.wait_for_selector(".turn >> nth=1 >> .msg-assistant[data-message-id]")
    turn = db_rows(live, "select parent_id from messages where role = 'user' and content = ?",
                   ["And then?"])
    assert turn[0]["parent_id"] == b_id

    # Rank three candidates: C best, then A; B is implied last.
    page.get_by_role("button", name=re.compile("^Rank 3")).click()
    send(page, "Rank these")
    page.wait_for_selector(".verdict-rank .cand[data-message-id] >> nth=2")
    shot(page, "rank-1280")
    cands = page.locator(".verdict-rank .cand[data-message-id]")
    ids = [int(cands.nth(i).get_attribute("data-message-id")) for i in range(3)]
    page.get_by_role("button", name=re.compile("^Rank answer C")).click()
    page.get_by_role("button", name=re.compile("^Rank answer A")).click()
    assert page.inner_text(".rank-summary") == "Your order: C › A › B"
    page.get_by_role("button", name="Submit ranking").click()
    page.wait_for_selector(".verdict", state="detached")
    ranking = wait_rows(live, "select message_ids from rankings")
    assert json.loads(ranking[0]["message_ids"]) == [ids[2], ids[0], ids[1]]
    last = page.locator(".turn").last.locator(".msg-assistant[data-message-id]")
    assert int(last.get_attribute("data-message-id")) == ids[2]

    # Every compare_every-th turn asks for a comparison even in single mode.
    every = live.config.feedback.compare_every
    assert every > 1
    page.get_by_role("button", name=re.compile("^Single")).click()
    page.evaluate("""n => { for (const k of Object.keys(localStorage))
                             if (k.startsWith('assistant.turns.')) localStorage.setItem(k, n); }""",
                  str(every - 1))
    send(page, "Automatic comparison?")
    page.wait_for_selector(".verdict-compare .cand[data-message-id] >> nth=1")
    assert "Comparison turn" in page.inner_text(".composer-note")
    page.get_by_role("button", name="Tie").click()
    page.wait_for_selector(".verdict", state="detached")
    assert db_rows(live, "select choice from comparisons order by id")[-1]["choice"] == "tie"
    # The verdict stays visible, and both answers stay reachable.
    last = page.locator(".turn").last
    assert "tie with answer 2" in last.locator(".verdict-note").inner_text()
    last.get_by_role("button", name="Next answer", exact=True).click()
    page.wait_for_selector(".turn >> nth=-1 >> .verdict-note:has-text('tie with answer 1')")

    # Both bad, then an unrated comparison that survives a reload.
    page.get_by_role("button", name=re.compile("^Compare")).click()
    send(page, "Two bad ones")
    page.wait_for_selector(".verdict-compare .cand[data-message-id] >> nth=1")
    page.get_by_role("button", name="Both bad").click()
    page.wait_for_selector(".turn >> nth=-1 >> .verdict-note:has-text('both bad')")
    send(page, "Unrated pair")
    page.wait_for_selector(".verdict-compare .cand[data-message-id] >> nth=1")
    page.get_by_role("button", name="Skip rating for now").click()
    page.wait_for_selector(".verdict", state="detached")
    page.reload()
    last = page.locator(".turn").last
    last.locator(".switcher-n").wait_for()
    assert last.locator(".switcher-n").inner_text() == "1/2"
    last.get_by_role("button", name="Next answer", exact=True).click()
    assert last.locator(".switcher-n").inner_text() == "2/2"
    last.get_by_role("button", name="Compare these answers").click()
    page.wait_for_selector(".verdict-compare .cand[data-message-id] >> nth=1")
    no_object_object(page)


def test_second_user_cannot_see_first_users_conversations(live_server, new_page):
    live = live_server
    alice, bob = live.add_user("alice"), live.add_user("bob")
    r = httpx.post(f"{live.url}/api/chat", headers=live.headers(alice), timeout=60,
                   json={"content": "Alice's secret plans", "max_tokens": 4})
    assert r.status_code == 200, r.text
    conv_id = r.json()["conversation_id"]
    page = new_page(WIDE)
    page.expected_console = [r"status of 404"]        # alice's conversation is not found
    sign_in(page, live, bob)
    page.wait_for_selector("#conv-list :text('No conversations yet.')")
    assert "secret" not in page.inner_text("body")
    page.goto(f"{live.url}/#/c/{conv_id}")
    page.wait_for_selector("h2:has-text('Conversation not found')")
    assert "secret" not in page.inner_text("body")


def test_model_output_with_html_is_shown_as_text(live_server, new_page):
    live = live_server
    key = live.add_user("mallory")
    evil = ("<script>window.__pwned = 1</script> <img src=x onerror=\"window.__pwned = 2\"> "
            "[click](javascript:window.__pwned=3) **still bold**")
    scripted_answers(live, [evil])
    page = new_page(WIDE)
    sign_in(page, live, key)
    send(page, "Say something nasty")
    page.wait_for_selector(".msg-assistant[data-message-id]")
    md = page.locator(".msg-assistant .md")
    assert "<script>window.__pwned = 1</script>" in md.inner_text()
    assert "<img src=x" in md.inner_text()
    assert md.locator("script, img, iframe").count() == 0
    assert md.locator("a").count() == 0                   # javascript: links stay text
    assert md.locator("strong").inner_text() == "still bold"
    page.reload()
    page.wait_for_selector(".msg-assistant .md strong")
    assert page.evaluate("window.__pwned") is None

    # Delete the conversation from the sidebar (with a confirmation).
    page.get_by_role("button", name=re.compile("^Delete conversation")).click()
    page.get_by_role("button", name="Delete", exact=True).click()
    page.wait_for_selector("#conv-list :text('No conversations yet.')")
    assert db_rows(live, "select * from conversations") == []
    assert page.js_errors == []


def test_my_assistant_page_export_and_delete(live_server, new_page):
    live = live_server
    key = live.add_user("dora")
    r = httpx.post(f"{live.url}/api/chat", headers=live.headers(key), timeout=60,
                   json={"content": "Hi", "max_tokens": 4})
    mid = r.json()["candidates"][0]["id"]
    httpx.put(f"{live.url}/api/messages/{mid}/thumbs", headers=live.headers(key),
              json={"value": "up", "reasons": ["clear"], "comment": ""})
    for viewport, suffix in [(NARROW, "390"), (WIDE, "1280")]:
        page = new_page(viewport)
        sign_in(page, live, key)
        page.goto(f"{live.url}/#/me")
        page.wait_for_selector("h2.card-title:has-text('dora')")
        page.wait_for_selector(".card:has-text('Training history') table, "
                               ".card:has-text('Training history') p:not(:has-text('Loading'))")
        assert page.inner_text(".stat:has-text('thumbs up') .stat-n") == "1"
        shot(page, f"my-assistant-{suffix}")
    with page.expect_download() as info:
        page.get_by_role("button", name="Export my data as JSON").click()
    exported = json.loads(Path(info.value.path()).read_text())
    assert "dora" in json.dumps(exported)

    page.get_by_role("button", name="Delete my data").click()
    page.get_by_role("button", name="Cancel").click()       # a confirmation, not an accident
    assert page.is_visible(".page-h")
    page.get_by_role("button", name="Delete my data").click()
    page.get_by_role("button", name="Delete everything").click()
    page.wait_for_selector("#api-key")
    assert httpx.get(f"{live.url}/api/conversations", headers=live.headers(key)).status_code == 401


def test_admin_page_for_admins_only(live_server, new_page):
    live = live_server
    bob = live.add_user("bob")
    r = httpx.post(f"{live.url}/api/chat", headers=live.headers(bob), timeout=60,
                   json={"content": "Hi", "max_tokens": 4})
    httpx.put(f"{live.url}/api/messages/{r.json()['candidates'][0]['id']}/thumbs",
              headers=live.headers(bob), json={"value": "down", "reasons": [], "comment": ""})
    page = new_page(WIDE)
    page.expected_console = [r"status of 403"]        # bob is not an admin
    sign_in(page, live, bob)
    assert page.locator("#nav-admin").count() == 0
    page.goto(f"{live.url}/#/admin")
    page.wait_for_selector(".notice-warn:has-text('Admin role needed')")
    shot(page, "admin-refused-1280")

    for viewport, suffix in [(WIDE, "1280"), (NARROW, "390")]:
        page = new_page(viewport)
        sign_in(page, live, live.admin_key)
        if suffix == "390":
            page.get_by_role("button", name="Open menu").click()
        page.click("#nav-admin")
        page.wait_for_selector("td:has-text('bob')")
        if suffix == "1280":
            page.fill("#new-user-name", "erin")
            page.get_by_role("button", name="Create user").click()
            page.wait_for_selector(".key-reveal:has-text('API key for erin')")
            new_key = page.inner_text(".key-reveal code")
            assert httpx.get(f"{live.url}/api/conversations",
                             headers=live.headers(new_key)).status_code == 200
            # Retrain bob: a queued run shows up (or "pending" if training is not there).
            page.get_by_role("button", name="Retrain bob", exact=True).click()
            page.wait_for_selector("tr:has(td:has-text('bob')) :is(.pill-queued, .pill-running)")
            # One forced run; the worker may already have claimed it (a fast machine).
            runs = db_rows(live, "select status, force from training_runs")
            assert [r["force"] for r in runs] == [1]
            assert runs[0]["status"] in {"queued", "running"}
            # A run is going: Retrain is off for bob; erin has no feedback: off too.
            assert page.get_by_role("button", name="Retrain bob", exact=True).is_disabled()
            assert page.get_by_role("button", name="Retrain erin", exact=True).is_disabled()
            # The export list knows erin without a reload.
            assert "erin" in page.inner_text("[aria-label='User to export']")
            no_object_object(page)
        shot(page, f"admin-{suffix}")

    # Rotate erin's key: the old one stops working, the new one is shown once.
    page = new_page(WIDE)
    sign_in(page, live, live.admin_key)
    page.goto(f"{live.url}/#/admin")
    page.get_by_role("button", name="Rotate key of erin").click()
    page.get_by_role("button", name="Rotate key", exact=True).click()
    page.wait_for_selector(".key-reveal:has-text('API key for erin')")
    rotated = page.inner_text(".key-reveal code")
    assert rotated != new_key
    r = httpx.get(f"{live.url}/api/conversations", headers=live.headers(new_key))
    assert r.status_code == 401

    with page.expect_download() as info:
        page.get_by_label("User to export").select_option("bob")
        page.get_by_role("button", name="Download export").click()
    assert info.value.suggested_filename.endswith(".jsonl")

    page.get_by_role("button", name="Delete erin").click()
    page.get_by_role("button", name="Delete user", exact=True).click()
    page.wait_for_selector("td:has-text('erin')", state="detached")
    assert db_rows(live, "select * from users where name = 'erin'") == []
    assert page.js_errors == []


def test_failed_send_keeps_the_draft_and_retries(live_server, new_page):
    live = live_server
    key = live.add_user("fred")
    scripted_answers(live, ["Here you are."])
    page = new_page(NARROW)
    page.expected_console = [r"ERR_FAILED", r"status of 500"]
    sign_in(page, live, key)

    # The server cannot be reached: the text stays, a human error offers Retry.
    page.route("**/api/chat", lambda route: route.abort())
    send(page, "Please keep this message")
    page.wait_for_selector(".send-error:has-text(\"Can't reach the assistant\")")
    assert page.input_value("#prompt") == "Please keep this message"
    assert page.locator(".turn").count() == 0 and page.locator(".badge-wait").count() == 0
    shot(page, "send-failed-390")
    # On a phone the error sits above the message box, not over it.
    err, box = page.locator(".send-error").bounding_box(), page.locator("#prompt").bounding_box()
    assert err["y"] + err["height"] <= box["y"]

    # The server fails: the same, in words.
    page.unroute("**/api/chat")
    page.route("**/api/chat", lambda route: route.fulfill(
        status=500, content_type="application/json", body='{"detail": "internal error"}'))
    page.get_by_role("button", name="Retry sending").click()
    page.wait_for_selector(".send-error:has-text('had a problem')")
    assert page.input_value("#prompt") == "Please keep this message"

    # Back up: Retry sends it, and only then is the box emptied.
    page.unroute("**/api/chat")
    page.get_by_role("button", name="Retry sending").click()
    page.wait_for_selector(".msg-assistant[data-message-id]:has-text('Here you are.')")
    assert page.input_value("#prompt") == ""
    assert page.is_hidden(".send-error")
    rows = db_rows(live, "select content from messages where role = 'user'")
    assert rows == [{"content": "Please keep this message"}]

    # Over the limit: a counter warns while typing and nothing is sent.
    limit = live.config.server.max_prompt_chars
    requests = []
    page.on("request", lambda r: requests.append(r) if r.url.endswith("/api/chat") else None)
    page.fill("#prompt", "x" * int(limit * 0.9))
    assert page.inner_text("#char-count") == f"{int(limit * 0.9):,} / {limit:,}"
    page.fill("#prompt", "x" * (limit + 5))
    page.wait_for_selector("#char-count.over")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".send-error:has-text('too long')")
    assert f"{limit:,}" in page.inner_text(".send-error")
    assert len(page.input_value("#prompt")) == limit + 5 and requests == []
    no_object_object(page)


def test_edit_a_sent_message_makes_a_branch(live_server, new_page):
    live = live_server
    page, _ = chat_page(live, new_page, "gina", ["An answer."], WIDE)
    send(page, "Original question")
    page.wait_for_selector(".msg-assistant[data-message-id]")
    first_answer = page.get_attribute(".msg-assistant[data-message-id]", "data-message-id")
    page.get_by_role("button", name="Edit message").click()
    page.get_by_label("Edit your message").fill("Better question")
    page.get_by_role("button", name="Send edited message").click()
    page.wait_for_selector(f".msg-assistant[data-message-id]:not([data-message-id='{first_answer}'])")
    wait_answer_done(page)
    assert page.inner_text(".msg-user .bubble") == "Better question"
    versions = page.get_by_role("group", name="Versions of this message")
    assert versions.locator(".switcher-n").inner_text() == "2/2"
    versions.get_by_role("button", name="Previous version of this message").click()
    page.wait_for_selector(f".msg-assistant[data-message-id='{first_answer}']")
    assert page.inner_text(".msg-user .bubble") == "Original question"
    rows = db_rows(live, "select content, parent_id from messages where role = 'user' order by id")
    assert rows == [{"content": "Original question", "parent_id": None},
                    {"content": "Better question", "parent_id": None}]
    # A new message continues the branch on screen (the original one here).
    send(page, "Follow-up on the original")
    page.wait_for_selector(".turn >> nth=1 >> .msg-assistant[data-message-id]")
    wait_answer_done(page)
    assert page.inner_text(".turn >> nth=0 >> .bubble") == "Original question"
    follow_up = db_rows(live, "select parent_id from messages where content = ?",
                        ["Follow-up on the original"])
    assert follow_up == [{"parent_id": int(first_answer)}]


def test_deleted_conversation_link_does_not_open_another_chat(live_server, new_page):
    live = live_server
    page, _ = chat_page(live, new_page, "hank", ["Noted."], NARROW)
    send(page, "Soon deleted")
    page.wait_for_selector(".msg-assistant[data-message-id]")
    url = page.url
    page.get_by_role("button", name="Open menu").click()
    delete = page.get_by_role("button", name=re.compile("^Delete conversation"))
    # Phones have no hover: the delete and rename icons are visible anyway.
    assert delete.evaluate("b => getComputedStyle(b).opacity") == "1"
    delete.click()
    # The dialog's focus is on the safe choice: Enter does not delete.
    assert page.evaluate("document.activeElement.textContent") == "Cancel"
    page.get_by_role("button", name="Delete", exact=True).click()
    page.wait_for_selector("#conv-list :text('No conversations yet.')")
    page.goto(url)
    page.wait_for_selector("h2:has-text('Conversation not found')")
    assert "Soon deleted" not in page.inner_text("#view")


def test_rename_and_search_conversations(live_server, new_page):
    live = live_server
    key = live.add_user("iris")
    for text in ("Cooking pasta", "Fixing my bike"):
        r = httpx.post(f"{live.url}/api/chat", headers=live.headers(key), timeout=60,
                       json={"content": text, "max_tokens": 2})
        assert r.status_code == 200
    page = new_page(WIDE)
    sign_in(page, live, key)
    page.wait_for_selector(".conv-title:has-text('Cooking pasta')")
    page.fill("#conv-search", "bike")
    page.wait_for_selector(".conv-title:has-text('Cooking pasta')", state="detached")
    assert page.locator(".conv").count() == 1
    page.get_by_role("button", name="Rename conversation “Fixing my bike”").click()
    page.fill("#prompt-dialog-input", "Bike repair")
    page.press("#prompt-dialog-input", "Enter")
    page.fill("#conv-search", "")
    page.wait_for_selector(".conv-title:has-text('Bike repair')")
    assert db_rows(live, "select title from conversations order by id")[1]["title"] == "Bike repair"


def seeded_user(live, name: str) -> str:
    """A user with three answers, one thumbs, and what training would have left behind."""
    from seed_learning import feature_dim, seed

    key = live.add_user(name)
    ids = []
    conv = None
    for text in ("Write a haiku", "Summarise the news", "Plan my week"):
        body = {"content": text, "max_tokens": 3, **({"conversation_id": conv} if conv else {})}
        r = httpx.post(f"{live.url}/api/chat", headers=live.headers(key), timeout=60, json=body)
        conv = r.json()["conversation_id"]
        ids.append(r.json()["candidates"][0]["id"])
    httpx.put(f"{live.url}/api/messages/{ids[0]}/thumbs", headers=live.headers(key),
              json={"value": "up", "reasons": ["clear"]})
    user_id = httpx.get(f"{live.url}/api/me", headers=live.headers(key)).json()["id"]
    seed(live.config.db_path, live.config.adapters_dir, user_id, live.state.engine.base_id,
         {ids[0]: 1.5, ids[1]: -0.5, ids[2]: 0.3}, dim=feature_dim(live.state.engine))
    return key


def test_my_assistant_shows_what_was_learned(live_server, new_page):
    live = live_server
    key = seeded_user(live, "jane")
    user_id = db_rows(live, "select id from users where name = 'jane'")[0]["id"]
    con = sqlite3.connect(live.config.db_path)
    with con:                                  # a run going on now, 3 steps in
        con.execute("insert into training_runs (user_id, status, force, requested_by, created_at,"
                    " metrics) values (?, 'running', 0, 'scheduler', '2026-01-01T00:00:00Z', ?)",
                    [user_id, json.dumps({"steps": [{"step": i, "reward_mean": 0.5}
                                                    for i in range(3)]})])
    con.close()
    page = new_page(WIDE)
    sign_in(page, live, key)
    page.goto(f"{live.url}/#/me")
    page.wait_for_selector(".card:has-text('Training history') table")
    text = page.inner_text("#view")
    assert f"Learning: step 3 of {live.config.training.steps}" in text
    assert "A training run is going now" in text
    con = sqlite3.connect(live.config.db_path)
    with con:                                  # the run moves on: the page follows by itself
        con.execute("update training_runs set metrics = ? where status = 'running'",
                    [json.dumps({"steps": [{"step": i, "reward_mean": 0.5} for i in range(5)]})])
    con.close()
    page.wait_for_selector(f"td:has-text('Learning: step 5 of {live.config.training.steps}')")
    assert "1 of 10" in text or f"1 of {live.config.training.min_new_events}" in text
    assert "Promoted as v1: it won 75% of 4 test prompts against the base model" in text
    assert "Not promoted: it was not better than the base model" in text
    assert "learning 2 min" in text and "4 learning steps" in text
    assert "It agrees with 75% of your own choices" in text
    likes = page.locator(".likes-col").first
    assert "Write a haiku" in likes.locator("li").first.inner_text()
    page.wait_for_selector(".chart canvas")                 # uPlot drew the win-rate plot
    assert "win rate vs base" in page.inner_text(".card:has(.chart)").lower()
    no_object_object(page)
    shot(page, "my-assistant-learned-1280", full_page=True)


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_every_page_in_both_themes(live_server, new_page, dark):
    live = live_server
    theme = "dark" if dark else "light"
    key = seeded_user(live, "kim")
    scripted_answers(live, ["Sure:\n\n```js\nconst x = 1; // one\n```\n\nAnything else?",
                            "Another take, *shorter*."])
    for viewport, size in [(WIDE, "1280"), (NARROW, "390")]:
        page = new_page(viewport, dark=dark)
        page.goto(live.url + "/")
        shot(page, f"signin-{size}-{theme}")
        sign_in(page, live, key)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        channels = [int(c) for c in re.findall(r"\d+", background)[:3]]
        assert (sum(channels) / 3 < 60) if dark else (sum(channels) / 3 > 200), background
        page.get_by_role("button", name=re.compile("^Compare")).click()
        send(page, "Show me code")
        page.wait_for_selector(".verdict-compare .cand[data-message-id] >> nth=1")
        shot(page, f"compare-{size}-{theme}")
        page.get_by_role("button", name="A is better").click()
        page.wait_for_selector(".verdict-note")
        page.wait_for_selector(".msg-assistant pre code.hljs")
        page.get_by_role("button", name="Good answer (thumbs up)").last.click()
        shot(page, f"chat-{size}-{theme}")
        page.goto(f"{live.url}/#/me")
        page.wait_for_selector(".chart canvas")
        no_object_object(page)
        shot(page, f"my-assistant-{size}-{theme}", full_page=True)
        admin = new_page(viewport, dark=dark)
        sign_in(admin, live, live.admin_key)
        admin.goto(f"{live.url}/#/admin")
        admin.wait_for_selector("td:has-text('kim')")
        admin.get_by_role("button", name="Versions of kim").click()
        admin.wait_for_selector("td:has-text('v1') .pill:has-text('serving')")
        admin.wait_for_selector(".card:has-text('Training') table")
        no_object_object(admin)
        shot(admin, f"admin-{size}-{theme}", full_page=True)


def test_delete_my_data_shows_progress_then_signs_out(live_server, new_page):
    live = live_server
    key = live.add_user("lou")
    page = new_page(WIDE)
    sign_in(page, live, key)
    page.goto(f"{live.url}/#/me")
    held = []
    page.route("**/api/me", lambda route: held.append(route) if route.request.method == "DELETE"
               else route.continue_())
    page.get_by_role("button", name="Delete my data").click()
    page.get_by_role("button", name="Delete everything").click()
    page.wait_for_selector("dialog[open]:has-text('Deleting your data') .spinner")
    assert page.evaluate("localStorage.getItem('assistant.apiKey')") == key
    held[0].continue_()
    page.wait_for_selector("#api-key")
    assert page.evaluate("localStorage.getItem('assistant.apiKey')") is None
    assert httpx.get(f"{live.url}/api/me", headers=live.headers(key)).status_code == 401


def test_thumbs_comment_kept_and_answer_length(live_server, new_page):
    live = live_server
    page, _ = chat_page(live, new_page, "mona", ["A short answer."], NARROW)
    # Answer length: "Short" is saved on the server, which halves the default max_tokens.
    page.select_option("#answer-length", "short")
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.url.endswith("/api/chat") else None)
    send(page, "Hi")
    page.wait_for_selector(".msg-assistant[data-message-id]")
    assert "max_tokens" not in bodies[0]
    mid = int(page.get_attribute(".msg-assistant[data-message-id]", "data-message-id"))
    assert db_rows(live, "select max_tokens from messages where id = ?", [mid]) == [
        {"max_tokens": live.config.generation.max_tokens_default // 2}]

    # A comment typed under a thumbs down and closed with Done is saved...
    page.get_by_role("button", name="Bad answer (thumbs down)").click()
    panel = page.locator(".feedback-panel:not([hidden])")
    panel.wait_for()
    assert panel.bounding_box()["y"] + 40 < page.viewport_size["height"]   # scrolled into view
    page.get_by_label("Comment on this answer").fill("too vague")
    page.get_by_role("button", name="Done").click()
    page.wait_for_selector(".feedback-status:has-text('Comment saved')")
    rows = db_rows(live, "select value, comment from thumbs where message_id = ?", [mid])
    assert rows == [{"value": "down", "comment": "too vague"}]
    # ...and does not carry over to a thumbs up.
    page.get_by_role("button", name="Good answer (thumbs up)").click()
    page.wait_for_selector(".feedback[data-saved='up']")
    assert page.input_value(".feedback-panel textarea") == ""
    rows = db_rows(live, "select value, comment from thumbs where message_id = ?", [mid])
    assert rows == [{"value": "up", "comment": None}]
    # Remembered by the server, not only by this browser.
    page.evaluate("""() => { for (const k of Object.keys(localStorage))
                   if (k.startsWith('assistant.length.')) localStorage.removeItem(k); }""")
    page.reload()
    page.wait_for_selector("#answer-length")
    assert page.input_value("#answer-length") == "short"


def axe_violations(page) -> list[str]:
    """axe-core (bundled by axe-playwright-python) on the page as shown, with the
    experimental rule that names and visible labels match turned on."""
    axe = pytest.importorskip("axe_playwright_python.sync_playwright")
    options = {"resultTypes": ["violations"],
               "rules": {"label-content-name-mismatch": {"enabled": True}}}
    settle(page)                        # colour contrast is measured on a still page
    result = axe.Axe().run(page, options=options)
    return [f"{v['id']}: {[(n['target'], n.get('failureSummary')) for n in v['nodes']][:4]}"
            for v in result.response["violations"]]


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_accessibility_axe(live_server, new_page, dark):
    live = live_server
    key = seeded_user(live, "nina")
    scripted_answers(live, ["Sure:\n\n```python\nx = 1\n```", "Or *this*."])
    page = new_page(WIDE, dark=dark)
    page.goto(live.url + "/")
    page.wait_for_selector("#api-key")
    found = {"signin": axe_violations(page)}
    sign_in(page, live, key)
    page.get_by_role("button", name=re.compile("^Compare")).click()
    send(page, "Show me")
    page.wait_for_selector(".verdict-compare .cand[data-message-id] >> nth=1")
    found["compare"] = axe_violations(page)
    page.get_by_role("button", name="Tie").click()
    page.wait_for_selector(".verdict-note")
    page.get_by_role("button", name="Bad answer (thumbs down)").click()
    page.wait_for_selector(".msg-assistant pre code.hljs")
    found["chat"] = axe_violations(page)
    page.goto(f"{live.url}/#/me")
    page.wait_for_selector(".chart canvas")
    found["me"] = axe_violations(page)
    admin = new_page(WIDE, dark=dark)
    sign_in(admin, live, live.admin_key)
    admin.goto(f"{live.url}/#/admin")
    admin.wait_for_selector(".card:has-text('Training') table")
    found["admin"] = axe_violations(admin)
    assert {k: v for k, v in found.items() if v} == {}
