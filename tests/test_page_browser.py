"""The chat page in a real headless Chromium, against the real app on a model that follows a harmony script.

The script is the one a person would see on a good day: reasoning, a python call (run for real in
the sandbox), more reasoning, then an answer with Markdown and a code block. Screenshots of the main
states land in each test's folder and in /tmp/webui-shots/.
"""

from __future__ import annotations

import http.server
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from doubles import ScriptedModel
from gptoss_metal.assistant import Engine
from gptoss_metal.harmony_io import encoding
from gptoss_metal.server.assembly import assemble
from serving import free_port, live_server

sync_api = pytest.importorskip("playwright.sync_api")

from browser import launch, shoot  # noqa: E402

REASONING_1 = "The user asks for the 30th Fibonacci number. I will compute it with Python instead of guessing."
CODE = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nprint(fib(30))"
ANSWER = ("The **30th Fibonacci number** is `832040`.\n\nHere is the function I used:\n\n```python\n"
          "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n```\n\n"
          "| n | fib(n) |\n|---|---|\n| 10 | 55 |\n| 30 | 832040 |")
SCRIPT = [
    f"<|channel|>analysis<|message|>{REASONING_1}<|end|><|start|>assistant"
    f"<|channel|>analysis to=python <|constrain|>code<|message|>{CODE}<|call|>",
    f"<|channel|>analysis<|message|>The tool printed 832040.<|end|><|start|>assistant"
    f"<|channel|>final<|message|>{ANSWER}<|return|>",
]
QUESTION = "What is the 30th Fibonacci number? Use Python to check."


def E(s: str) -> list[int]:
    return encoding().encode(s, allowed_special="all")


@contextmanager
def page_server(data_dir: Path, replies=(), *, delay_s: float = 0.0, api_key=None, port=None):
    model = ScriptedModel([E(r) for r in replies], delay_s=delay_s)
    srv = assemble(Engine(model, model_id="gpt-oss-scripted", cache_slots=2), data_dir=data_dir, api_key=api_key)
    try:
        with live_server(srv.service, app=srv.app, port=port) as url:
            yield url, srv, model
    finally:
        srv.workspace.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = ctx.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    yield pg
    ctx.close()


def until(page, js: str, timeout: float = 60.0) -> None:
    """Poll a JS expression until truthy. (Playwright's wait_for_function evaluates strings with eval,
    which the page's Content-Security-Policy rightly forbids; page.evaluate is not subject to it.)"""
    deadline = time.time() + timeout
    while not page.evaluate(js):
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {js}")
        time.sleep(0.05)


def ask(page, text: str) -> None:
    page.fill("#input", text)
    page.keyboard.press("Enter")


def wait_done(page, n: int = 1, timeout: float = 60.0) -> None:
    until(page, f"document.querySelectorAll('.turn.assistant .figures').length >= {n}", timeout)


def test_reasoning_streams_then_the_answer_with_the_tool_call_folded(page, tmp_path):
    with page_server(tmp_path / "data", SCRIPT, delay_s=0.03) as (url, srv, _):
        conv = srv.workspace.store.create(python=True)
        page.goto(f"{url}/#{conv.id}")
        page.wait_for_selector(".conv.active")
        shoot(page, tmp_path, "01-empty")
        assert page.is_checked("#python-toggle")
        ask(page, QUESTION)
        # reasoning arrives first, in an open block, while there is no answer yet
        until(page, "(document.querySelector('details.reasoning .reasoning-text') || {}).textContent"
                               "?.length > 20")
        assert page.eval_on_selector("details.reasoning", "d => d.open")
        assert page.query_selector(".answer") is None
        assert "stop" in page.get_attribute("#send", "class")
        shoot(page, tmp_path, "02-streaming-reasoning")
        page.wait_for_selector("details.tool")
        page.wait_for_selector(".answer")
        shoot(page, tmp_path, "03-streaming-answer")
        wait_done(page)
        # the reasoning folded when the answer began; the tool call shows its code and output, folded
        assert page.eval_on_selector_all("details.reasoning", "ds => ds.every(d => !d.open)")
        tool = page.query_selector("details.tool")
        assert not tool.evaluate("d => d.open")
        assert "Ran python" in tool.inner_text()
        tool.query_selector("summary").click()
        assert "print(fib(30))" in page.inner_text("details.tool .tool-code")
        assert page.inner_text("details.tool .tool-output").strip() == "832040"
        # Markdown: bold, inline code, a highlighted code block with a copy button, a table
        answer = page.query_selector(".answer")
        assert answer.query_selector("strong").inner_text() == "30th Fibonacci number"
        assert answer.query_selector(".code-block .hljs-keyword") is not None
        assert answer.query_selector(".code-block .copy-btn") is not None
        assert answer.query_selector("table td") is not None
        figures = page.inner_text(".figures")
        assert "prompt tokens" in figures and "reused" in figures and "prefill" in figures and "decode" in figures
        assert page.inner_text("#conv-title") == QUESTION
        shoot(page, tmp_path, "04-answer-tool-open")
        page.emulate_media(color_scheme="dark")
        shoot(page, tmp_path, "05-answer-dark")
        assert not page.errors, page.errors


def test_stop_mid_stream_stops_the_server_and_keeps_the_partial_answer(page, tmp_path):
    long = ("<|channel|>analysis<|message|>Let me count.<|end|><|start|>assistant<|channel|>final<|message|>"
            + " ".join(str(i) for i in range(3000)) + "<|return|>")
    with page_server(tmp_path / "data", [long, "<|channel|>final<|message|>Fine.<|return|>"],
                     delay_s=0.01) as (url, srv, model):
        page.goto(url)
        ask(page, "Count to 3000.")
        until(page, "(document.querySelector('.answer') || {}).textContent?.length > 30")
        page.keyboard.press("Escape")
        page.wait_for_selector(".turn-foot .tag")
        assert page.inner_text(".turn-foot .tag") == "stopped"
        deadline = time.time() + 5
        while srv.service.scheduler.running is not None and time.time() < deadline:
            time.sleep(0.05)
        assert srv.service.scheduler.running is None  # the server stopped generating
        j = model.j
        time.sleep(0.3)
        assert model.j == j < 1000
        partial = page.inner_text(".answer")
        assert 0 < len(partial) < len(" ".join(str(i) for i in range(3000)))
        shoot(page, tmp_path, "06-stopped")
        # the next message works right away
        ask(page, "Never mind.")
        wait_done(page, 2)
        assert page.inner_text(".turn.assistant:last-child .answer") == "Fine."


def test_conversation_survives_a_server_restart_and_regenerate_and_edit_work(page, tmp_path):
    data = tmp_path / "data"
    port = free_port()
    with page_server(data, SCRIPT, port=port) as (url, srv, _):
        page.goto(url)
        page.click("label.switch")  # what a person clicks: the switch drawn over the checkbox
        assert page.is_checked("#python-toggle")
        page.click("#effort button[data-effort='high']")
        ask(page, QUESTION)
        wait_done(page)
    # the server is gone: the page says so instead of going blank
    ask(page, "Are you there?")
    page.wait_for_selector(".error-card")
    assert "cannot be reached" in page.inner_text("#banner") or "went away" in page.inner_text("#banner")
    assert page.get_attribute("#server-status", "class") == "dot down"
    shoot(page, tmp_path, "07-server-gone")
    replies = [SCRIPT[1], "<|channel|>final<|message|>The 31st is `1346269`.<|return|>"]
    with page_server(data, replies, port=port) as (url, srv, _):
        until(page, "document.querySelector('#banner').hidden", 15)  # it noticed the server is back
        page.reload()
        page.wait_for_selector(".conv")
        titles = page.eval_on_selector_all(".conv", "cs => cs.map(c => c.textContent)")
        assert titles == [QUESTION]
        page.click(".conv")
        page.wait_for_selector(".turn.assistant .answer")
        assert "832040" in page.inner_text(".answer")
        assert page.get_attribute("#effort button[data-effort='high']", "aria-checked") == "true"
        assert page.is_checked("#python-toggle")
        assert "Ran python" in page.inner_text("details.tool summary")
        shoot(page, tmp_path, "08-after-restart")
        # regenerate the answer (the script answers the step after the tool call again)
        page.click(".regen-btn")
        wait_done(page)
        # edit the last question and resend
        page.hover(".turn.user")
        page.click(".edit-btn")
        page.fill(".edit-area", "And the 31st?")
        page.click(".edit-send")
        until(page, "document.querySelector('.turn.user .bubble')?.textContent === 'And the 31st?'")
        wait_done(page)
        assert "1346269" in page.inner_text(".answer")
        stored = srv.workspace.store.get(srv.workspace.store.list()[0]["id"])
        assert [m["content"] for m in stored.messages if m["role"] == "user"] == ["And the 31st?"]


class Listener:
    """A local HTTP server that counts every request: nothing the model writes may reach it."""

    def __init__(self):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()

            do_POST = do_GET  # noqa: N815

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_script_event_handlers_and_remote_images_in_model_output_do_nothing(page, tmp_path):
    spy = Listener()
    evil = (f"Here you go: <script>window.__pwned = 'script'</script>\n\n"
            f"<img src=x onerror=\"window.__pwned = 'onerror'\">\n\n"
            f"![tracking pixel]({spy.url}/pixel.png)\n\n"
            f"<img src=\"{spy.url}/raw.png\">\n\n"
            f"<link rel=prefetch href=\"{spy.url}/prefetch\"><iframe src=\"{spy.url}/frame\"></iframe>\n\n"
            f"[a link]({spy.url}/link) and [js](javascript:window.__pwned='link') and <{spy.url}/auto>\n\n"
            "```html\n<script>window.__pwned = 'code'</script>\n```")
    reasoning = f"<img src=\"{spy.url}/reasoning.png\" onerror=\"window.__pwned='reasoning'\">"
    script = [f"<|channel|>analysis<|message|>{reasoning}<|end|><|start|>assistant"
              f"<|channel|>final<|message|>{evil}<|return|>"]
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        with page_server(tmp_path / "data", script) as (url, _, _):
            page.goto(url)
            ask(page, "Show me something nasty.")
            wait_done(page)
            page.click("details.reasoning summary")
            page.wait_for_timeout(500)
            shoot(page, tmp_path, "09-untrusted-output")
            assert page.evaluate("window.__pwned") is None
            answer = page.query_selector(".answer")
            assert "<script>" in answer.inner_text()  # shown as text
            html = answer.inner_html()
            assert "onerror" not in html.replace("onerror=\"window", "") or "<img" not in html
            assert page.eval_on_selector_all(".answer img, .answer iframe, .answer link, .answer script", "n => n.length") == 0
            assert "[image not loaded: tracking pixel]" in answer.inner_text()
            links = page.eval_on_selector_all(".answer a", "as => as.map(a => [a.getAttribute('href'), a.rel, a.target])")
            assert all(h is None or h.startswith("http") for h, _, _ in links)
            assert all("noopener" in rel and "noreferrer" in rel and target == "_blank" for h, rel, target in links if h)
            # nothing left the page for the spy's address: not the pixel, not a prefetch, not a link
            assert not [r for r in requests if r.startswith(spy.url)]
            assert spy.hits == []
    finally:
        spy.close()


def test_the_api_key_is_asked_once_and_remembered(page, tmp_path):
    with page_server(tmp_path / "data", ["<|channel|>final<|message|>Hello.<|return|>"], api_key="sekret") as (url, _, _):
        page.goto(url)
        page.wait_for_selector("#key-dialog[open]")
        shoot(page, tmp_path, "10-api-key")
        page.fill("#key-input", "wrong")
        page.click("#key-ok")
        until(page, "document.querySelector('#key-error').textContent.includes('not accepted')")
        page.fill("#key-input", "sekret")
        page.check("#key-remember")
        page.click("#key-ok")
        until(page, "document.querySelector('#model-name').textContent === 'gpt-oss-scripted'")
        ask(page, "hi")
        wait_done(page)
        page.reload()
        until(page, "document.querySelector('#model-name').textContent === 'gpt-oss-scripted'")
        assert not page.eval_on_selector("#key-dialog", "d => d.open")


def test_forged_host_and_cross_origin_pages_are_refused_in_the_browser(page, tmp_path):
    with page_server(tmp_path / "data") as (url, srv, _):
        port = url.rsplit(":", 1)[1]
        # Chromium resolves *.localhost to loopback: the shape of a DNS-rebinding attack
        r = page.goto(f"http://rebind.localhost:{port}/")
        assert r.status == 403 and "DNS rebinding" in page.inner_text("body")
        # another origin's page (here a second local server) trying the API
        attacker = Listener()
        try:
            page.goto(f"{attacker.url}/")  # an empty page on another origin
            # the status the server answered, also for responses the browser then withholds from the page
            cdp = page.context.new_cdp_session(page)
            cdp.send("Network.enable")
            urls: dict[str, str] = {}
            answered: list[tuple[str, int]] = []
            cdp.on("Network.requestWillBeSent", lambda e: urls.__setitem__(e["requestId"], e["request"]["url"]))
            cdp.on("Network.responseReceivedExtraInfo",
                   lambda e: answered.append((urls.get(e["requestId"], ""), e["statusCode"])))
            result = page.evaluate("""async (target) => {
                const out = {};
                try { await fetch(target + '/ui/api/conversations'); out.cors = 'read'; }
                catch (e) { out.cors = 'blocked'; }
                try {  // a "simple" request needs no preflight: the server itself must refuse it
                  await fetch(target + '/ui/api/conversations', {method: 'POST', mode: 'no-cors',
                              body: '{}', headers: {'Content-Type': 'text/plain'}});
                  out.simple = 'opaque';
                } catch (e) { out.simple = 'blocked'; }  // Cross-Origin-Resource-Policy
                return out;
            }""", url)
            assert result["cors"] == "blocked"
            assert result["simple"] == "blocked"
            page.wait_for_timeout(300)
            ours = [status for u, status in answered if u.startswith(url)]
            assert len(ours) == 2 and set(ours) == {403}, answered
            assert srv.workspace.store.list() == []
        finally:
            attacker.close()


def test_phone_width(browser, tmp_path):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    pg = ctx.new_page()
    try:
        with page_server(tmp_path / "data", SCRIPT) as (url, srv, _):
            srv.workspace.store.create(python=True)
            pg.goto(url)
            assert pg.is_hidden(".sidebar .conv") or pg.evaluate(
                "document.querySelector('.sidebar').getBoundingClientRect().right <= 0")
            pg.click("#menu")
            pg.wait_for_timeout(300)
            shoot(pg, tmp_path, "11-phone-drawer")
            pg.click(".conv")
            pg.wait_for_timeout(300)
            ask(pg, QUESTION)
            wait_done(pg)
            width = pg.evaluate("document.documentElement.scrollWidth")
            assert width <= 390  # nothing overflows sideways
            shoot(pg, tmp_path, "12-phone-answer")
    finally:
        ctx.close()
