"""The chat page in a real headless Chromium, against `gptoss serve` on a real checkpoint that follows a script.

The checkpoint (tests/scripted_checkpoint.py: real weights through the real converter and loader)
generates, turn after turn, what a person would see on a good day: reasoning, a python call (run for
real in the sandbox), more reasoning, then an answer with Markdown and a code block. Screenshots of the
main states land in each test's folder and in /tmp/webui-shots/.
"""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import httpx
import pytest

from scripted_checkpoint import build_scripted_checkpoint, script_tokens
from serving import gptoss_serve

sync_api = pytest.importorskip("playwright.sync_api")

from browser import launch, shoot  # noqa: E402

QUESTION = "What is 6 times 7?"  # (a prompt must not end like a message of the script does)
ANSWER = ("The answer is **42**:\n\n```python\nprint(6 * 7)\n```\n\n"
          "| a | b | a*b |\n|---|---|---|\n| 6 | 7 | 42 |")
LONG = ("Counting slowly: one, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, thirteen, "
        "fourteen, fifteen, sixteen, seventeen, eighteen, nineteen, twenty, and so on until the end.")
SCRIPTS = [
    # each user message or answered tool call moves the checkpoint to its next segment
    "<|channel|>analysis<|message|>Let me compute it with Python.<|end|><|start|>assistant"
    "<|channel|>analysis to=python code<|message|>print(6 * 7)<|call|>",
    f"<|channel|>analysis<|message|>The tool agrees with me.<|end|><|start|>assistant<|channel|>final<|message|>{ANSWER}<|return|>",
    f"<|channel|>final<|message|>{LONG}<|return|>",
    "<|channel|>final<|message|>Fine.<|return|>",
]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_scripted_checkpoint(tmp_path_factory.mktemp("scripted") / "model", script_tokens(*SCRIPTS)).path


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """One `gptoss serve` for the tests that only add conversations of their own."""
    with gptoss_serve(model, tmp_path_factory.mktemp("data"), "--model-id", "gpt-oss-scripted") as url:
        yield url


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


def stored(url: str) -> list[dict]:
    return [httpx.get(f"{url}/ui/api/conversations/{c['id']}").json()
            for c in httpx.get(url + "/ui/api/conversations").json()["data"]]


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
    until(page, f"document.querySelectorAll('.turn.assistant .figures').length >= {n} && "
                "!document.querySelector('#app').classList.contains('busy')", timeout)


WATCH_ORDER = """() => {
    // Records, from inside the page, what a person saw while the turn streamed: MutationObserver sees
    // every intermediate state, so this does not depend on when the test happens to look.
    window.__seen = {reasoningOpenBeforeAnswer: false, answerWhileReasoningOpen: null, toolBeforeAnswer: false};
    new MutationObserver(() => {
        const r = document.querySelector('details.reasoning');
        const a = document.querySelector('.answer');
        if (r && r.open && !a && r.textContent.length > 20) window.__seen.reasoningOpenBeforeAnswer = true;
        if (!a && document.querySelector('details.tool')) window.__seen.toolBeforeAnswer = true;
        if (a && window.__seen.answerWhileReasoningOpen === null)
            window.__seen.answerWhileReasoningOpen = [...document.querySelectorAll('details.reasoning')].some(d => d.open);
    }).observe(document.querySelector('#messages'), {subtree: true, childList: true, characterData: true,
                                                     attributes: true});
}"""


def test_reasoning_streams_then_the_answer_with_the_tool_call_folded(page, server, tmp_path):
    page.goto(server)
    until(page, "document.querySelector('#model-name').textContent === 'gpt-oss-scripted'")
    shoot(page, tmp_path, "01-empty")
    page.click("label.switch")  # the python tool, for this conversation
    page.evaluate(WATCH_ORDER)
    ask(page, QUESTION)
    page.wait_for_selector("details.reasoning")
    shoot(page, tmp_path, "02-streaming")
    wait_done(page)
    seen = page.evaluate("window.__seen")
    assert seen == {"reasoningOpenBeforeAnswer": True, "answerWhileReasoningOpen": False, "toolBeforeAnswer": True}
    # the reasoning folded when the answer began; the tool call shows its code and output, folded
    states = page.eval_on_selector_all("details.reasoning", "ds => ds.map(d => [d.open, d.textContent])")
    blocks = page.evaluate("[...document.querySelectorAll('.turn.assistant .blocks > *')].map(e => e.className)")
    assert [open_ for open_, _ in states] == [False, False], (states, blocks)
    assert page.text_content("details.reasoning .reasoning-text") == "Let me compute it with Python."
    tool = page.query_selector("details.tool")
    assert not tool.evaluate("d => d.open") and "Ran python" in tool.inner_text()
    tool.query_selector("summary").click()
    assert page.inner_text("details.tool .tool-code") == "print(6 * 7)"
    assert page.inner_text("details.tool .tool-output").strip() == "42"
    assert page.inner_text("details.tool .badge") == "done"
    # Markdown: bold, a highlighted code block with a copy button, a table
    answer = page.query_selector(".answer")
    assert answer.query_selector("strong").inner_text() == "42"
    assert answer.query_selector(".code-block .hljs-built_in, .code-block .hljs-number") is not None
    assert answer.query_selector(".code-block .copy-btn") is not None
    assert answer.query_selector("table td") is not None
    figures = page.inner_text(".figures")
    assert "prompt tokens" in figures and "reused" in figures and "prefill" in figures and "decode" in figures
    assert page.inner_text("#conv-title") == QUESTION
    shoot(page, tmp_path, "03-answer-tool-open")
    page.emulate_media(color_scheme="dark")
    page.wait_for_timeout(300)  # let .btn's background transition (0.15 s) finish before the shot
    shoot(page, tmp_path, "04-answer-dark")
    assert not page.errors, page.errors


def test_stop_mid_stream_stops_the_server_and_keeps_the_partial_answer(page, server, tmp_path):
    page.goto(server)
    ask(page, QUESTION)
    wait_done(page)
    ask(page, "Now count slowly.")  # the third segment: a long answer
    until(page, "document.querySelectorAll('.answer').length === 2 && "
                "document.querySelectorAll('.answer')[1].textContent.length > 0")
    page.keyboard.press("Escape")
    page.wait_for_selector(".turn-foot .tag")
    assert page.inner_text(".turn-foot .tag") == "stopped"
    deadline = time.time() + 5
    while httpx.get(server + "/health").json()["busy"] and time.time() < deadline:
        time.sleep(0.05)
    assert not httpx.get(server + "/health").json()["busy"]  # the server stopped generating
    partial = page.query_selector_all(".answer")[1].inner_text()
    assert 0 < len(partial) < len(LONG) and LONG.startswith(partial.strip())
    shoot(page, tmp_path, "05-stopped")
    conv = next(c for c in stored(server) if c["title"] == QUESTION and len(c["messages"]) == 6)
    last = conv["messages"][-1]
    assert last["interrupted"] and last["figures"]["finish_reason"] == "interrupted"
    assert last["figures"]["generated_tokens"] < len(script_tokens(SCRIPTS[2])[0]) - 1
    # the next message works right away
    ask(page, "Never mind.")
    wait_done(page, 3)
    assert page.inner_text(".turn.assistant:last-child .answer") == "Fine."


def test_conversation_survives_a_server_restart_and_regenerate_and_edit_work(page, model, tmp_path):
    data = tmp_path / "data"
    with gptoss_serve(model, data) as url:
        port = int(url.rsplit(":", 1)[1])  # the restarted server takes the same one: the page keeps its address
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
    until(page, "!document.querySelector('#app').classList.contains('busy')")  # the read-back failed too
    assert page.eval_on_selector_all(".error-card", "cs => cs.length") == 1  # one error card, not two
    shoot(page, tmp_path, "06-server-gone")
    with gptoss_serve(model, data, port=port) as url:
        until(page, "document.querySelector('#banner').hidden", 30)  # it noticed the server is back
        page.reload()
        page.wait_for_selector(".conv")
        titles = page.eval_on_selector_all(".conv", "cs => cs.map(c => c.textContent)")
        assert titles == [QUESTION]
        page.click(".conv")
        page.wait_for_selector(".turn.assistant .answer")
        assert "42" in page.inner_text(".answer")
        assert page.get_attribute("#effort button[data-effort='high']", "aria-checked") == "true"
        assert page.is_checked("#python-toggle")
        assert "Ran python" in page.inner_text("details.tool summary")
        shoot(page, tmp_path, "07-after-restart")
        # regenerate: the last question is answered again (the checkpoint replays its turn)
        page.click(".regen-btn")
        wait_done(page)
        assert page.text_content(".tool-output").strip() == "42" and "42" in page.inner_text(".answer")
        # edit the last question and resend
        page.hover(".turn.user")
        page.click(".edit-btn")
        page.fill(".edit-area", "And 7 times 6?")
        page.click(".edit-send")
        until(page, "document.querySelector('.turn.user .bubble')?.textContent === 'And 7 times 6?'")
        wait_done(page)
        (conv,) = stored(url)
        assert [m["content"] for m in conv["messages"] if m["role"] == "user"] == ["And 7 times 6?"]
        assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "tool", "assistant"]


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
            f"[a link]({spy.url}/link) and [js](javascript:alert(1)) and <{spy.url}/auto>\n\n"
            "```html\n<script>alert('code')</script>\n```")
    reasoning = f"<img src=\"{spy.url}/reasoning.png\" onerror=\"alert('reasoning')\">"
    script = [f"<|channel|>analysis<|message|>{reasoning}<|end|><|start|>assistant"
              f"<|channel|>final<|message|>{evil}<|return|>"]
    # a window of 16 tokens tells the repeated URL prefixes apart by the text before them
    nasty_model = build_scripted_checkpoint(tmp_path / "nasty", script_tokens(*script), window=16).path
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        with gptoss_serve(nasty_model, tmp_path / "data") as url:
            page.goto(url)
            ask(page, "Show me something nasty.")
            wait_done(page)
            page.click("details.reasoning summary")
            page.wait_for_timeout(500)
            shoot(page, tmp_path, "08-untrusted-output")
            assert page.evaluate("window.__pwned") is None and dialogs == []
            answer = page.query_selector(".answer")
            assert "<script>" in answer.inner_text()  # shown as text
            assert page.eval_on_selector_all(".answer img, .answer iframe, .answer link, .answer script, "
                                             ".reasoning img", "n => n.length") == 0
            assert page.eval_on_selector_all(".turn.assistant *", "ns => ns.filter(n => [...n.attributes].some("
                                             "a => a.name.startsWith('on'))).length") == 0
            assert "[image not loaded: tracking pixel]" in answer.inner_text()
            links = page.eval_on_selector_all(".answer a", "as => as.map(a => [a.getAttribute('href'), a.rel, a.target])")
            assert links and all(h is None or h.startswith("http") for h, _, _ in links)
            assert all("noopener" in rel and "noreferrer" in rel and target == "_blank" for h, rel, target in links if h)
            # nothing left the page for the spy's address: not the pixel, not a prefetch, not a link
            assert not [r for r in requests if r.startswith(spy.url)]
            assert spy.hits == []
    finally:
        spy.close()


def test_the_api_key_is_asked_once_and_remembered(page, model, tmp_path):
    with gptoss_serve(model, tmp_path / "data", "--model-id", "gpt-oss-scripted",
                      env={"GPTOSS_API_KEY": "sekret"}) as url:
        page.goto(url)
        page.wait_for_selector("#key-dialog[open]")
        shoot(page, tmp_path, "09-api-key")
        page.fill("#key-input", "wrong")
        page.click("#key-ok")
        until(page, "document.querySelector('#key-error').textContent.includes('not accepted')")
        page.fill("#key-input", "sekret")
        page.check("#key-remember")
        page.click("#key-ok")
        until(page, "document.querySelector('#model-name').textContent === 'gpt-oss-scripted'")
        ask(page, QUESTION)
        wait_done(page)
        page.reload()
        until(page, "document.querySelector('#model-name').textContent === 'gpt-oss-scripted'")
        assert not page.eval_on_selector("#key-dialog", "d => d.open")
        assert httpx.get(url + "/ui/api/conversations").status_code == 401


def test_forged_host_and_cross_origin_pages_are_refused_in_the_browser(page, server):
    url = server
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
        statuses: dict[str, int] = {}  # joined with urls at the end: CDP may report them in either order
        cdp.on("Network.requestWillBeSent", lambda e: urls.__setitem__(e["requestId"], e["request"]["url"]))
        cdp.on("Network.responseReceivedExtraInfo", lambda e: statuses.__setitem__(e["requestId"], e["statusCode"]))
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
        answered = [(urls.get(rid, "?"), status) for rid, status in statuses.items()]
        ours = [status for u, status in answered if u.startswith(url)]
        assert len(ours) == 2 and set(ours) == {403}, answered
    finally:
        attacker.close()


def test_phone_width(browser, server, tmp_path):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    pg = ctx.new_page()
    try:
        pg.goto(server)
        until(pg, "document.querySelector('.sidebar').getBoundingClientRect().right <= 0")  # a drawer
        pg.click("#menu")
        pg.wait_for_timeout(300)
        shoot(pg, tmp_path, "10-phone-drawer")
        pg.click("#new-chat")
        pg.wait_for_timeout(300)
        pg.click("label.switch")
        ask(pg, QUESTION)
        wait_done(pg)
        assert pg.evaluate("document.documentElement.scrollWidth") <= 390  # nothing overflows sideways
        shoot(pg, tmp_path, "11-phone-answer")
    finally:
        ctx.close()
