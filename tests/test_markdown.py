"""The Markdown renderer (assistant/static/markdown.js), run in headless chromium.

The static directory is served by a plain http.server (ES modules need http), no model needed.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parent.parent / "assistant" / "static"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def render():
    from playwright.sync_api import sync_playwright

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(STATIC))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
        page.evaluate("async () => { window.md = await import('/markdown.js'); }")

        def run(text: str) -> str:
            return page.evaluate("t => window.md.renderMarkdown(t)", text)

        run.page = page
        yield run
        browser.close()
    server.shutdown()


def test_html_is_escaped(render):
    out = render("<script>alert(1)</script> & <b onmouseover='x'>hi</b>")
    assert out == ("<p>&lt;script&gt;alert(1)&lt;/script&gt; &amp; "
                   "&lt;b onmouseover=&#39;x&#39;&gt;hi&lt;/b&gt;</p>")


def test_inline_formatting(render):
    assert render("**bold** and *it* and `co*de*` and _under_") == (
        "<p><strong>bold</strong> and <em>it</em> and <code>co*de*</code> and <em>under</em></p>")
    assert render("2 * 3 * 4 is not italic") == "<p>2 * 3 * 4 is not italic</p>"
    assert render("snake_case_name stays") == "<p>snake_case_name stays</p>"
    assert render("`<b>` in code") == "<p><code>&lt;b&gt;</code> in code</p>"


def test_paragraphs_and_line_breaks(render):
    assert render("one\ntwo\n\nthree") == "<p>one<br>two</p><p>three</p>"


def test_code_block_with_language(render):
    out = render("Look:\n```python\nif a < b:\n    print(**x)\n```\nafter")
    assert out == ('<p>Look:</p><pre data-lang="python"><code class="language-python">'
                   "if a &lt; b:\n    print(**x)</code></pre><p>after</p>")
    assert render("```\nunterminated <x>") == "<pre><code>unterminated &lt;x&gt;</code></pre>"
    bad = render('```js" onclick="x\ncode\n```')
    assert "onclick" not in bad.split(">")[0] and 'class="language-js"' in bad


def test_lists_and_headings(render):
    assert render("# Title\n- a\n- **b**\n  continued\n\n3. x\n4. y") == (
        "<h1>Title</h1><ul><li>a</li><li><strong>b</strong><br>continued</li></ul>"
        '<ol start="3"><li>x</li><li>y</li></ol>')
    assert render("### Small ###") == "<h3>Small</h3>"
    assert render("#nospace") == "<p>#nospace</p>"


def test_quotes_and_rules(render):
    assert render("> quoted *text*\n> more") == (
        "<blockquote><p>quoted <em>text</em><br>more</p></blockquote>")
    assert render("---") == "<hr>"


def test_links_only_for_http(render):
    assert render("[docs](https://example.org/a_b?x=1&y=2)") == (
        '<p><a href="https://example.org/a_b?x=1&amp;y=2" target="_blank" '
        'rel="noopener noreferrer">docs</a></p>')
    for evil in ["[x](javascript:alert(1))", "[x](data:text/html,hi)", "[x](//evil.example)",
                 '[x](https://a.example/" onclick="alert(1))']:
        out = render(evil)
        assert "<a " not in out and 'onclick="' not in out, out


def test_rendered_dom_has_no_active_content(render):
    page = render.page
    payloads = ["<img src=x onerror=alert(1)>", "<svg onload=alert(1)>",
                "[a](javascript:alert(1))", "```\n</code></pre><script>x</script>\n```",
                "**<iframe src=https://x>**", "`</code><script>`"]
    count = page.evaluate("""ps => {
        const d = document.createElement('div');
        d.innerHTML = ps.map(p => window.md.renderMarkdown(p)).join('');
        return d.querySelectorAll(
            'script, img, svg, iframe, [onerror], [onload], [onclick]').length;
    }""", payloads)
    assert count == 0
