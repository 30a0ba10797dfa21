"""The web UI works under the strict Content-Security-Policy the server sends (item 13):
signing in, streaming an answer with Markdown and rating it raise no CSP violation."""

from __future__ import annotations

from tests.test_ui import (  # noqa: F401  (browser, new_page: fixtures)
    WIDE,
    browser,
    new_page,
    scripted_answers,
    send,
    sign_in,
    wait_answer_done,
)


def test_ui_runs_under_the_content_security_policy(live_server, new_page):  # noqa: F811
    live = live_server
    scripted_answers(live, ["Hello **world**, see [docs](https://example.org/docs).\n\n"
                            "```python\nprint('hi')\n```"])
    page = new_page(WIDE)
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text)
            if "Content Security Policy" in msg.text or "Content-Security-Policy" in msg.text
            else None)
    response = page.goto(live.url + "/")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    sign_in(page, live, live.add_user("alice"))
    send(page, "hello")
    wait_answer_done(page)
    answer = page.locator(".msg-assistant[data-message-id]")
    assert answer.locator(".md strong").inner_text() == "world"
    page.wait_for_timeout(300)          # let late console messages arrive
    assert violations == [] and page.js_errors == [], (violations, page.js_errors)
