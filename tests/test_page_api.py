"""The chat page's HTTP side: its API (/ui/api), the localhost guard, and `gptoss serve`/`app` on a real checkpoint."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import httpx
import pytest

from doubles import ScriptedModel
from gptoss_metal.assistant import Engine
from gptoss_metal.harmony_io import encoding
from gptoss_metal.server.assembly import assemble
from serving import gptoss_serve, live_server

ANALYSIS = "<|channel|>analysis<|message|>{}<|end|><|start|>assistant"
FINAL = "<|channel|>final<|message|>{}<|return|>"
PY_CALL = "<|channel|>analysis to=python <|constrain|>code<|message|>{}<|call|>"


def E(s: str) -> list[int]:
    return encoding().encode(s, allowed_special="all")


@contextmanager
def page_server(tmp_path, replies=(), api_key=None, hold_at=None, **kw):
    model = ScriptedModel([E(r) for r in replies], hold_at=hold_at)
    srv = assemble(Engine(model, model_id="scripted", cache_slots=2), data_dir=tmp_path, api_key=api_key,
                   current_date="2026-11-23", **kw)
    try:
        with live_server(app=srv.app) as url:
            yield url, srv, model
    finally:
        model.release.set()
        srv.close()


WAIT_S = 60  # deadlines for a broken server, never timings


def until(condition, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def in_background(fn) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


def turn_events(url: str, cid: str, text: str) -> list[dict]:
    with httpx.stream("POST", f"{url}/ui/api/conversations/{cid}/turn", json={"text": text}, timeout=WAIT_S) as r:
        return events(r)


def events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]


def test_turn_streams_reasoning_tool_call_and_answer_then_persists(tmp_path):
    replies = [ANALYSIS.format("Use python.") + PY_CALL.format("print(6*7)"), FINAL.format("It is **42**.")]
    with page_server(tmp_path, replies) as (url, srv, _):
        conv = httpx.post(url + "/ui/api/conversations", json={"python": True, "effort": "low"}).json()
        with httpx.stream("POST", f"{url}/ui/api/conversations/{conv['id']}/turn", json={"text": "6*7?"},
                          timeout=60) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            evs = events(r)
        kinds = [e["type"] for e in evs]
        assert kinds[0] == "start" and kinds[-1] == "done"
        assert kinds.index("reasoning") < kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("answer")
        result = next(e for e in evs if e["type"] == "tool_result")
        assert result["name"] == "python" and result["status"] == "ok" and result["output"].strip() == "42"
        assert "".join(e["text"] for e in evs if e["type"] == "answer") == "It is **42**."
        assert evs[-1]["figures"]["prompt_tokens"] > 0 and not evs[-1]["interrupted"]
        got = httpx.get(f"{url}/ui/api/conversations/{conv['id']}").json()
        assert got["title"] == "6*7?" and got["effort"] == "low" and got["python"] is True
        assert [m["role"] for m in got["messages"]] == ["user", "assistant", "tool", "assistant"]
        assert "exact_history" not in json.dumps(got)
        assert httpx.get(url + "/ui/api/conversations").json()["data"][0]["id"] == conv["id"]


def test_rename_export_delete_and_errors(tmp_path):
    with page_server(tmp_path, [FINAL.format("Hello **there**.")]) as (url, _, _):
        cid = httpx.post(url + "/ui/api/conversations", json={}).json()["id"]
        with httpx.stream("POST", f"{url}/ui/api/conversations/{cid}/turn", json={"text": "hi"}, timeout=60) as r:
            events(r)
        assert httpx.patch(f"{url}/ui/api/conversations/{cid}", json={"title": "Greetings"}).json()["title"] == "Greetings"
        md = httpx.get(f"{url}/ui/api/conversations/{cid}/export", params={"format": "markdown"})
        assert md.status_code == 200 and 'filename="Greetings.md"' in md.headers["content-disposition"]
        assert md.text.startswith("# Greetings") and "Hello **there**." in md.text
        js = httpx.get(f"{url}/ui/api/conversations/{cid}/export", params={"format": "json"}).json()
        assert js["version"] == 2 and js["messages"][-1]["exact_history"]
        r = httpx.post(f"{url}/ui/api/conversations/{cid}/turn", json={"text": "  "})
        assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
        r = httpx.patch(f"{url}/ui/api/conversations/{cid}", json={"effort": "extreme"})
        assert r.status_code == 400
        assert httpx.delete(f"{url}/ui/api/conversations/{cid}").json()["deleted"]
        r = httpx.get(f"{url}/ui/api/conversations/{cid}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_stop_cancels_generation_on_the_server(tmp_path):
    reply = ANALYSIS.format("Counting.") + FINAL.format(" ".join(str(i) for i in range(2000)))
    with page_server(tmp_path, [reply], hold_at=30) as (url, srv, model):
        cid = httpx.post(url + "/ui/api/conversations", json={}).json()["id"]
        reader, got = in_background(lambda: turn_events(url, cid, "count"))
        assert model.reached.wait(WAIT_S)  # the model is inside its 30th pass
        # a second turn on a busy conversation is refused, not queued twice
        assert httpx.post(f"{url}/ui/api/conversations/{cid}/turn", json={"text": "x"}).status_code == 409
        (seq,) = srv.service.engine.core.active
        assert httpx.post(f"{url}/ui/api/conversations/{cid}/stop").json()["stopping"]
        assert seq.cancelled.is_set()
        model.release.set()
        reader.join(WAIT_S)
        done = got[0][-1]
        assert done["type"] == "done" and done["interrupted"]
        assert model.decoded == 30  # the model stopped at once, not just the stream
        assert seq.released.is_set() and srv.service.engine.active == 0
        last = httpx.get(f"{url}/ui/api/conversations/{cid}").json()["messages"][-1]
        assert last["interrupted"] and last["figures"]["finish_reason"] == "interrupted"


def test_leaving_a_turn_mid_stream_frees_the_model_and_the_conversation(tmp_path):
    reply = FINAL.format(" ".join(str(i) for i in range(2000)))
    with page_server(tmp_path, [reply], hold_at=3) as (url, srv, model):
        cid = httpx.post(url + "/ui/api/conversations", json={}).json()["id"]
        with httpx.stream("POST", f"{url}/ui/api/conversations/{cid}/turn", json={"text": "count"}, timeout=60) as r:
            lines = r.iter_lines()  # kept: a dropped iterator closes the connection
            assert json.loads(next(lines)[5:])["type"] == "start"
            assert model.reached.wait(WAIT_S)  # generating: the model is inside its 3rd pass
            (seq,) = srv.service.engine.core.active
        # leaving the block closed the connection mid-stream
        until(seq.cancelled.is_set)
        model.release.set()
        assert seq.released.wait(WAIT_S) and model.decoded == 3
        until(lambda: not httpx.get(f"{url}/ui/api/conversations/{cid}").json()["busy"])  # a new turn may start
        assert not httpx.get(url + "/health").json()["busy"]


def test_api_key_guards_the_page_api_but_not_its_files(tmp_path):
    with page_server(tmp_path, api_key="sekret") as (url, _, _):
        assert httpx.get(url + "/").status_code == 200
        assert httpx.get(url + "/static/js/app.js").status_code == 200
        r = httpx.get(url + "/ui/api/conversations")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        ok = httpx.get(url + "/ui/api/conversations", headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200


@pytest.mark.parametrize("path", ["/", "/v1/models", "/ui/api/conversations", "/health", "/static/style.css"])
def test_forged_host_is_refused_everywhere(tmp_path, path):
    with page_server(tmp_path) as (url, _, _):
        r = httpx.get(url + path, headers={"Host": "attacker.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
        port = url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
            assert httpx.get(url + path, headers={"Host": host}).status_code == 200


def test_allowed_host_names(tmp_path):
    with page_server(tmp_path, allow_hosts=["mymac.local"]) as (url, _, _):
        assert httpx.get(url + "/health", headers={"Host": "mymac.local:8000"}).status_code == 200
        assert httpx.get(url + "/health", headers={"Host": "mymac.local.attacker.example"}).status_code == 403


def test_cross_origin_browser_requests_are_refused_unless_allowed(tmp_path):
    with page_server(tmp_path, allow_origins=["http://localhost:3000"]) as (url, _, _):
        own = url  # the page's own origin
        r = httpx.post(url + "/ui/api/conversations", json={}, headers={"Origin": own})
        assert r.status_code == 201
        for evil in ("http://attacker.example", "null", "http://127.0.0.1:1"):
            r = httpx.post(url + "/v1/chat/completions", headers={"Origin": evil},
                           json={"model": "scripted", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
        # a no-cors GET from another site carries no Origin: Sec-Fetch-Site gives it away
        r = httpx.get(url + "/ui/api/conversations", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"})
        assert r.status_code == 403
        # the allowed origin gets CORS
        pre = httpx.options(url + "/v1/models", headers={"Origin": "http://localhost:3000",
                                                         "Access-Control-Request-Method": "GET",
                                                         "Access-Control-Request-Headers": "authorization"})
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"
        r = httpx.get(url + "/v1/models", headers={"Origin": "http://localhost:3000"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_hardening_headers(tmp_path):
    with page_server(tmp_path) as (url, _, _):
        for path in ("/", "/v1/models", "/static/js/app.js"):
            h = httpx.get(url + path).headers
            csp = h["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert h["x-content-type-options"] == "nosniff" and h["referrer-policy"] == "no-referrer"
        assert httpx.get(url + "/static/js/app.js").headers["content-type"].startswith(("text/javascript",
                                                                                        "application/javascript"))


# -- the real CLI on a real checkpoint -------------------------------------------------------------


def test_gptoss_serve_serves_page_and_api_and_refuses_forged_host(tiny_runtime, tmp_path):
    with gptoss_serve(tiny_runtime, tmp_path / "data", "--max-tokens", "8") as url:
        assert "<title>gpt-oss</title>" in httpx.get(url + "/").text
        assert httpx.get(url + "/", headers={"Host": "attacker.example"}).status_code == 403
        cid = httpx.post(url + "/ui/api/conversations", json={}).json()["id"]
        with httpx.stream("POST", f"{url}/ui/api/conversations/{cid}/turn", json={"text": "hi"}, timeout=120) as r:
            evs = events(r)
        assert evs[-1]["type"] == "done" and evs[-1]["figures"]["generated_tokens"] >= 1
    assert (tmp_path / "data" / "conversations.sqlite3").exists()


def test_gptoss_app_opens_the_page_in_the_browser(tiny_runtime, tmp_path):
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "fake-browser"
    browser.write_text(f"#!/bin/sh\necho \"$1\" > {opened}\n")
    browser.chmod(0o755)
    with gptoss_serve(tiny_runtime, tmp_path / "data", command="app", env={"BROWSER": str(browser)}) as url:
        until(lambda: opened.exists() and opened.read_text().strip())  # the browser is started after serving
        assert opened.read_text().strip() == url + "/"


def test_context_full_and_model_busy_are_reported(tmp_path):
    reply = FINAL.format(" ".join(str(i) for i in range(400)))
    with page_server(tmp_path, [reply], hold_at=10, max_queue=1) as (url, srv, model):
        engine = srv.service.engine
        a, b, c = (httpx.post(url + "/ui/api/conversations", json={}).json()["id"] for _ in range(3))
        ta, _ = in_background(lambda: turn_events(url, a, "long"))
        assert model.reached.wait(WAIT_S)  # a is generating (the queue is empty)
        tb, got_b = in_background(lambda: turn_events(url, b, "x"))
        until(lambda: engine.waiting == 1)  # b's generation waits in the engine's queue
        r = httpx.post(f"{url}/ui/api/conversations/{c}/turn", json={"text": "y"})
        assert r.status_code == 429 and "busy" in r.json()["error"]["message"]
        httpx.post(f"{url}/ui/api/conversations/{a}/stop")
        httpx.post(f"{url}/ui/api/conversations/{b}/stop")
        model.release.set()
        ta.join(WAIT_S)
        tb.join(WAIT_S)
        assert got_b[0][0] == {"type": "start", "conversation": b, "queued": 1}  # the page said it waits
        until(lambda: not engine.active and not engine.waiting)
        model.args.max_position_embeddings = 60
        evs = turn_events(url, c, "z")
        assert evs[-1]["type"] == "error" and evs[-1]["code"] == "context_length_exceeded"
        assert "context is full" in evs[-1]["message"]
        assert httpx.get(f"{url}/ui/api/conversations/{c}").json()["messages"] == []
