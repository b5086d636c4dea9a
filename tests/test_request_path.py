"""One request path: a client that hangs up frees the engine within one step, streamed or not, with an
API key or not; Ctrl-C and SIGTERM end a busy server within two seconds with one line and no traceback;
one log line per request; a chat-page turn busy in a tool holds none of the engine's sequences.

Steps are counted, not timed: the scripted model stops inside a known forward pass (`hold_at`) until the
test has made the client hang up and the server has cancelled the generation; then exactly that pass
completes and no other runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from doubles import ScriptedModel
from gptoss_metal.assistant import Engine
from gptoss_metal.harmony_io import encoding
from gptoss_metal.server.openai_api import OpenAIService
from serving import Output, gptoss_command, live_server, stop_process

LONG = "<|channel|>final<|message|>" + "word " * 400 + "<|return|>"
HOLD = 12
WAIT_S = 60  # deadlines for a broken server, never timings


def E(s: str) -> list[int]:
    return encoding().encode(s, allowed_special="all")


def until(condition, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def body(endpoint: str, stream: bool) -> dict:
    if endpoint == "chat":
        return {"model": "m", "messages": [{"role": "user", "content": "Talk."}], "stream": stream}
    return {"model": "m", "input": "Talk.", "stream": stream}


PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses"}


def raw_request(url: str, path: str, payload: dict, api_key: str | None) -> socket.socket:
    """Send one HTTP request on a socket of our own, so the test decides when the client hangs up."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    data = json.dumps(payload).encode()
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nContent-Type: application/json\r\n"
                  f"{auth}Content-Length: {len(data)}\r\n\r\n").encode() + data)
    return sock


@pytest.mark.parametrize("api_key", [None, "k"], ids=["open", "with-key"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_a_client_that_hangs_up_frees_the_engine_within_one_step(endpoint, stream, api_key):
    model = ScriptedModel([E(LONG)], hold_at=HOLD)
    engine = Engine(model, model_id="m")
    service = OpenAIService(engine, current_date="2026-11-23")
    with live_server(service, api_key=api_key) as url:
        sock = raw_request(url, PATHS[endpoint], body(endpoint, stream), api_key)
        assert model.reached.wait(WAIT_S)  # the decode thread is inside its HOLD-th pass
        (seq,) = engine.core.active
        sock.close()  # the client hangs up
        until(seq.cancelled.is_set)  # the server noticed, while the model is still held
        model.release.set()
        assert seq.released.wait(WAIT_S)
        assert model.decoded == HOLD  # the pass in flight completed; no other ran
        assert seq.stats.finish_reason == "cancelled" and engine.active == 0
        # and the engine serves the next request
        model.add_reply(E("<|channel|>final<|message|>Next.<|return|>"))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        r = httpx.post(url + PATHS["chat"], json=body("chat", False), headers=headers, timeout=WAIT_S)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Next."
    engine.close()


def test_a_page_turn_busy_in_a_tool_holds_no_sequence(tmp_path):
    """max_sequences=1: while a chat-page turn waits in its python tool, an API request runs at once."""
    from gptoss_metal.server.assembly import assemble

    model = ScriptedModel([E("<|channel|>analysis to=python code<|message|>print(1)<|call|>")])
    engine = Engine(model, model_id="m", max_sequences=1)
    in_tool, leave_tool = threading.Event(), threading.Event()

    class SlowPython:
        name = "python"

        def run(self, code):
            from gptoss_metal.assistant.tools.python_tool import ToolOutput

            in_tool.set()
            assert leave_tool.wait(WAIT_S)
            return ToolOutput("1\n", "ok")

        def reset(self):
            pass

        def close(self):
            pass

    server = assemble(engine, data_dir=tmp_path, current_date="2026-11-23")
    server.workspace.python_factory = SlowPython
    with live_server(app=server.app) as url:
        conv = httpx.post(url + "/ui/api/conversations", json={"python": True}).json()
        turn = threading.Thread(target=lambda: httpx.post(url + f"/ui/api/conversations/{conv['id']}/turn",
                                                          json={"text": "compute"}, timeout=WAIT_S).text)
        turn.start()
        assert in_tool.wait(WAIT_S)
        assert engine.active == 0  # the turn's generation ended; its tool runs outside the engine
        model.add_reply(E("<|channel|>final<|message|>API answer.<|return|>"))
        r = httpx.post(url + "/v1/chat/completions", json=body("chat", False), timeout=WAIT_S)
        assert r.json()["choices"][0]["message"]["content"] == "API answer."
        model.add_reply(E("<|channel|>final<|message|>One.<|return|>"))
        leave_tool.set()
        turn.join(WAIT_S)
    server.close()


# -- the process: Ctrl-C, SIGTERM, the request log --------------------------------------------------


def serve(tiny_runtime, tmp_path, *args: str) -> tuple[subprocess.Popen, Output, str]:
    proc = subprocess.Popen(gptoss_command("serve", str(tiny_runtime), "--port", "0", "--data-dir",
                                           str(tmp_path / "data"), *args),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = Output(proc)
    return proc, out, out.wait_for(r"chat page (http://[^ ]+?)/ ").group(1)


def busy(url: str, stream: bool, results: list) -> threading.Thread:
    """A request for far more tokens than the test will wait for, in a thread (its outcome in `results`)."""
    def go():
        payload = {"model": "tiny-runtime", "messages": [{"role": "user", "content": "Go on."}], "max_tokens": 100000,
                   "stream": stream}
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json=payload, timeout=WAIT_S) as r:
                results.append((r.status_code, r.read().decode()))
        except httpx.HTTPError as e:
            results.append(("error", str(e)))

    t = threading.Thread(target=go)
    t.start()
    return t


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_ends_a_busy_server_within_two_seconds_quietly(tiny_runtime, tmp_path, sig):
    proc, out, url = serve(tiny_runtime, tmp_path, "--max-sequences", "2")
    results: list = []
    clients = [busy(url, True, results), busy(url, False, results)]
    until(lambda: (lambda h: h["busy"] and h["queued"] == 0)(httpx.get(url + "/health").json()))
    t0 = time.monotonic()
    os.kill(proc.pid, sig)  # what Ctrl-C in the terminal sends to the server process
    code = proc.wait(timeout=WAIT_S)
    elapsed = time.monotonic() - t0
    text = out.finish()
    for c in clients:
        c.join(WAIT_S)
    assert elapsed < 2.0, (elapsed, text)
    assert code == (130 if sig == signal.SIGINT else 0), text
    assert "Traceback" not in text and "Error" not in text and "Cancelled" not in text, text
    assert text.count("shutting down") == 1, text
    streamed = next(body for status, body in results if status == 200 and body.startswith("data:"))
    assert '"server_shutting_down"' in streamed and streamed.rstrip().endswith("data: [DONE]")  # a proper end
    whole = [r for r in results if r is not None and not (r[0] == 200 and r[1].startswith("data:"))]
    assert whole and whole[0][0] == 503 and "server_shutting_down" in whole[0][1], results


def test_a_second_ctrl_c_forces_and_prints_nothing_more(tiny_runtime, tmp_path):
    proc, out, url = serve(tiny_runtime, tmp_path)
    results: list = []
    client = busy(url, True, results)
    until(lambda: httpx.get(url + "/health").json()["busy"])
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=WAIT_S)
    text = out.finish()
    client.join(WAIT_S)
    assert code == 130 and "Traceback" not in text and text.count("shutting down") == 1, text


def test_one_log_line_per_request(tiny_runtime, tmp_path):
    proc, out, url = serve(tiny_runtime, tmp_path)
    try:
        r = httpx.post(url + "/v1/chat/completions", timeout=WAIT_S, json={
            "model": "tiny-runtime", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "seed": 1})
        assert r.status_code == 200
        line = out.wait_for(r"POST /v1/chat/completions 200 .*").group(0)
        figures = dict(kv.split("=") for kv in line.split() if "=" in kv)
        usage = r.json()["usage"]
        assert int(figures["prompt"]) == usage["prompt_tokens"] and int(figures["generated"]) == 5
        assert figures["finish"] == "length" and figures["ttft"].endswith("s") and "tok/s" in line
        assert httpx.get(url + "/v1/models/nope").status_code == 404
        out.wait_for(r"GET /v1/models/nope 404 ")
    finally:
        stop_process(proc)
    quiet, qout, qurl = serve(tiny_runtime, tmp_path, "--log-level", "error")
    try:
        httpx.get(qurl + "/v1/models")
    finally:
        stop_process(quiet)
    assert "GET /v1/models" not in qout.finish()
