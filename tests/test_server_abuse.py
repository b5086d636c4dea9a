"""The server under bad input: every item of the catalogue is a clean OpenAI-shaped 4xx, nothing is
logged as a traceback, and the server keeps serving. Also: the API key check, and the warning for a
server open to the network without one."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doubles import ScriptedModel
from gptoss_metal.assistant import Engine
from gptoss_metal.harmony_io import HarmonyIOError
from gptoss_metal.harmony_io.schema import flatten_schema
from gptoss_metal.harmony_io.tokens import RETURN
from gptoss_metal.server import auth
from gptoss_metal.server.api_models import ChatCompletionRequest, ResponsesRequest
from gptoss_metal.server.app import create_app
from gptoss_metal.server.limits import DEFAULT_MAX_BODY_BYTES, check_body
from gptoss_metal.server.openai_api import OpenAIService
from serving import live_server

KEY = "sekret-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
CHAT, RESPONSES = "/v1/chat/completions", "/v1/responses"


class Terse(ScriptedModel):
    """Answers every generation with an empty final answer at once (unless a reply is scripted)."""

    def __call__(self, tokens, cache=None):
        if not self.replies:
            self.add_reply([RETURN])
        return super().__call__(tokens, cache)


class LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@contextmanager
def collected_logs() -> Iterator[LogCollector]:
    """Everything logged by the server (uvicorn's loggers do not propagate to the root logger)."""
    handler = LogCollector()
    loggers = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "fastapi")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


@pytest.fixture(scope="module")
def server():
    service = OpenAIService(Engine(Terse(), model_id="s"), stored_responses=2, current_date="2026-11-23")
    with live_server(service, api_key=KEY) as url:
        with collected_logs() as logs:
            # the collector sees what uvicorn logs for a failing request (the control for every check below)
            try:
                raise ValueError("probe")
            except ValueError:
                logging.getLogger("uvicorn.error").exception("probe")
            assert "Traceback" in logs.text
            logs.lines.clear()
            yield url, service, logs
    assert "Traceback" not in logs.text, logs.text[-3000:]


def post(url: str, path: str, body, headers=None, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers=headers or AUTH, timeout=60, **kw)


def assert_openai_error(r: httpx.Response, status: int, needle: str = "") -> dict:
    assert r.status_code == status, r.text[:500]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] and isinstance(err["message"], str)
    assert needle in err["message"], err["message"]
    return err


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def user(content="hi") -> dict:
    return {"model": "s", "messages": [{"role": "user", "content": content}]}


REF_BOMB = {"type": "object", "properties": {"a": {"$ref": "#/$defs/d0"}},
            "$defs": {**{f"d{i}": {"type": "object", "properties": {"x": {"$ref": f"#/$defs/d{i + 1}"},
                                                                    "y": {"$ref": f"#/$defs/d{i + 1}"}}}
                         for i in range(40)}, "d40": {"type": "string"}}}
DEEP_SCHEMA = json.loads('{"type":"object","properties":{"a":' * 70 + "{}" + "}}" * 70)

CATALOGUE = [
    # name, path, body, status, message needle, code
    ("oversized body", CHAT, b'{"model":"s","messages":[{"role":"user","content":"' + b"word " * (DEFAULT_MAX_BODY_BYTES // 5)
     + b'"}]}', 413, "larger than this server accepts", "request_too_large"),
    ("a 10 MB message", RESPONSES, json.dumps({"model": "s", "input": "x" * 10_000_000}).encode(), 413, "larger", None),
    ("deeply nested JSON", CHAT, ('{"model":"s","messages":[{"role":"user","content":' + nested(100_000) + "}]}").encode(),
     400, "nested deeper than 64", "nesting_too_deep"),
    ("nested JSON past the limit", CHAT, json.dumps(user() | {"metadata": json.loads(nested(80))}).encode(),
     400, "nested deeper than 64", "nesting_too_deep"),
    ("deeply nested tool schema", CHAT, user() | {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": DEEP_SCHEMA}}]}, 400, "nested deeper", "nesting_too_deep"),
    ("exponential $ref tool schema", CHAT, user() | {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": REF_BOMB}}]}, 400, "more than 10000 nodes", None),
    ("exponential $ref, Responses", RESPONSES, {"model": "s", "input": "x", "tools": [
        {"type": "function", "name": "f", "parameters": REF_BOMB}]}, 400, "more than 10000 nodes", None),
    ("invalid UTF-8", CHAT, b'{"model":"s","messages":[{"role":"user","content":"\xff\xfe"}]}', 400, "not valid UTF-8",
     "invalid_utf8"),
    ("lone surrogate", CHAT, b'{"model":"s","messages":[{"role":"user","content":"ab\\ud800cd"}]}', 400,
     "lone UTF-16 surrogate", "invalid_unicode"),
    ("lone low surrogate in a key", RESPONSES, b'{"model":"s","input":"x","metadata":{"\\udc00":1}}', 400,
     "surrogate", "invalid_unicode"),
    ("not JSON", CHAT, b"{not json", 400, "not valid JSON", "invalid_json"),
    ("tokenizer-stalling run", CHAT, user("a" * 300_000), 400, "300000 characters", "run_too_long"),
    ("unsupported OpenAI parameter", CHAT, user() | {"functions": [{"name": "f"}]}, 400, "functions is not supported",
     "unsupported_parameter"),
    ("n > 1", CHAT, user() | {"n": 3}, 400, "n=1", None),
    ("top_logprobs without logprobs", CHAT, user() | {"top_logprobs": 3}, 400, "needs logprobs", None),
    ("too many top_logprobs", CHAT, user() | {"logprobs": True, "top_logprobs": 21}, 400, "top_logprobs", None),
    ("a penalty", CHAT, user() | {"presence_penalty": 0.5}, 400, "presence_penalty is not supported",
     "unsupported_parameter"),
    ("background", RESPONSES, {"model": "s", "input": "x", "background": True}, 400, "background is not supported",
     "unsupported_parameter"),
    ("an unknown response_format", CHAT, user() | {"response_format": {"type": "yaml"}}, 400, "'yaml' is not supported",
     None),
    ("a json_schema without its schema", RESPONSES, {"model": "s", "input": "x", "text": {"format": {
        "type": "json_schema", "name": "x"}}}, 400, "needs a `schema`", None),
    ("tool_choice required without tools", CHAT, user() | {"tool_choice": "required"}, 400, "at least one tool", None),
    ("negative max_tokens", CHAT, user() | {"max_tokens": -5}, 400, "max_tokens", None),
    ("zero max_completion_tokens", CHAT, user() | {"max_completion_tokens": 0}, 400, "max_completion_tokens", None),
    ("huge max_tokens", CHAT, user() | {"max_tokens": 10**30}, 400, "max_tokens is too large", "invalid_value"),
    ("negative max_output_tokens", RESPONSES, {"model": "s", "input": "x", "max_output_tokens": -1}, 400,
     "max_output_tokens", None),
    ("huge max_output_tokens", RESPONSES, {"model": "s", "input": "x", "max_output_tokens": 2**63}, 400,
     "max_output_tokens is too large", "invalid_value"),
    ("previous_response_id that never existed", RESPONSES, {"model": "s", "input": "x",
                                                            "previous_response_id": "resp_never"}, 404, "not found", None),
    ("tool call id never issued", CHAT, {"model": "s", "messages": [
        {"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_never", "name": "f", "content": "1"}]},
     400, "'call_never' answers no tool call", None),
    ("call_id never issued", RESPONSES, {"model": "s", "input": [
        {"type": "function_call_output", "call_id": "call_never", "output": "1"}]}, 400,
     "No tool call found for function call output with call_id call_never", None),
    ("wrong type: messages", CHAT, {"model": "s", "messages": "hi"}, 400, "messages", None),
    ("wrong type: model", RESPONSES, {"model": ["s"], "input": "x"}, 400, "model", None),
    ("body is an array", CHAT, [1, 2], 400, "JSON object", None),
]


@pytest.mark.parametrize("name,path,body,status,needle,code", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_catalogue(server, name, path, body, status, needle, code):
    url, _, logs = server
    t0 = time.monotonic()
    err = assert_openai_error(post(url, path, body), status, needle)
    if code is not None:
        assert err["code"] == code
    assert time.monotonic() - t0 < 10  # refused, not worked through
    assert "Traceback" not in logs.text, logs.text[-3000:]
    assert post(url, CHAT, user()).status_code == 200  # and the server still answers


@pytest.mark.parametrize("path,body", [
    (CHAT, user() | {"frobnicate": 1, "client_metadata": {"a": 1}}),
    (RESPONSES, {"model": "s", "input": "x", "frobnicate": 1, "session_id": "s-1"}),
])
def test_unknown_parameters_are_ignored_named_in_a_header_and_logged_once(server, path, body, caplog):
    url, _, _ = server
    with caplog.at_level(logging.WARNING, logger="gptoss.server"):
        first, again = post(url, path, body), post(url, path, body)
    assert first.status_code == again.status_code == 200
    names = set(first.headers["x-gptoss-ignored-parameters"].split(", "))
    assert "frobnicate" in names and names <= {"frobnicate", "client_metadata", "session_id"}
    assert sum("frobnicate" in r.getMessage() for r in caplog.records) <= 1  # once per name, per process


def test_hosted_tools_are_left_out_with_a_header_not_refused(server):
    url, _, _ = server
    body = {"model": "s", "input": "x", "tools": [{"type": "web_search"}, {"type": "browser_search"},
                                                  {"type": "function", "name": "f", "parameters": {"type": "object"}}]}
    r = post(url, RESPONSES, body)
    assert r.status_code == 200 and r.headers["x-gptoss-ignored-tools"] == "web_search, browser_search"


def test_an_evicted_previous_response_is_a_clean_404(server):
    url, service, _ = server
    ids = [post(url, RESPONSES, {"model": "s", "input": f"q{i}"}).json()["id"] for i in range(3)]
    assert ids[0] not in service.responses and ids[2] in service.responses  # the store keeps 2
    assert_openai_error(post(url, RESPONSES, {"model": "s", "input": "more", "previous_response_id": ids[0]}), 404,
                        "keeps the last 2")
    assert post(url, RESPONSES, {"model": "s", "input": "more", "previous_response_id": ids[2]}).status_code == 200


def test_a_tool_result_for_an_issued_call_is_accepted(server):
    url, _, _ = server
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {"model": "s", "messages": [{"role": "user", "content": "x"},
                                       {"role": "assistant", "content": None, "tool_calls": [call]},
                                       {"role": "tool", "tool_call_id": "call_1", "content": "1"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}
    assert post(url, CHAT, body).status_code == 200
    items = [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "c1", "output": "1"}]
    assert post(url, RESPONSES, {"model": "s", "input": items}).status_code == 200


def test_harmless_openai_parameters_are_accepted(server):
    url, _, _ = server
    body = user() | {"user": "u1", "store": False, "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
                     "service_tier": "auto", "metadata": {"k": "v"}}
    assert post(url, CHAT, body).status_code == 200
    assert_openai_error(post(url, CHAT, user() | {"presence_penalty": 0.5}), 400, "presence_penalty is not supported")


def test_ordinary_long_text_is_not_mistaken_for_a_stalling_run():
    assert check_body(json.dumps(user("lorem ipsum dolor " * 50_000)).encode()) is None
    assert check_body(json.dumps(user("x" * 40_000)).encode()) is None  # one long run is fine, up to ~44 KB
    assert check_body(json.dumps(user(("y" * 30_000 + " ") * 3)).encode()).code == "run_too_long"


def test_the_body_limit_is_configurable_and_also_applies_to_chunked_bodies():
    service = OpenAIService(Engine(Terse(), model_id="s"), current_date="2026-11-23")
    small = create_app(service, max_body_bytes=2048)
    with live_server(app=small) as url:
        assert httpx.post(url + CHAT, json=user("a b " * 100), timeout=30).status_code == 200
        assert_openai_error(httpx.post(url + CHAT, json=user("a b " * 1000), timeout=30), 413, "2048 bytes")

        def chunks():
            yield b'{"model":"s","messages":[{"role":"user","content":"'
            for _ in range(100):
                yield b"a b " * 10
            yield b'"}]}'

        r = httpx.post(url + CHAT, content=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
        assert_openai_error(r, 413, "2048 bytes")  # no Content-Length: counted while it arrives


# -- wrong types everywhere ------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=20), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def _fields(model) -> list[str]:
    return list(model.model_fields)


@st.composite
def request_bodies(draw, model):
    """A body whose every field may be present, absent or of any JSON type, plus stray fields."""
    body = {}
    for name in _fields(model):
        if draw(st.booleans()):
            body[name] = draw(JSON)
    if draw(st.integers(0, 3)) == 0:
        body[draw(st.text(min_size=1, max_size=10))] = draw(JSON)
    # often a valid core, so the validation of the other fields is reached
    if draw(st.booleans()):
        body["model"] = "s"
        body["messages" if model is ChatCompletionRequest else "input"] = (
            [{"role": "user", "content": "hi"}] if model is ChatCompletionRequest else "hi")
    return body


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_wrong_types_everywhere_are_clean_4xx(server, data):
    url, _, logs = server
    model = data.draw(st.sampled_from([ChatCompletionRequest, ResponsesRequest]))
    body = data.draw(request_bodies(model))
    body.pop("stream", None) if data.draw(st.booleans()) else None
    path = CHAT if model is ChatCompletionRequest else RESPONSES
    r = httpx.post(url + path, content=json.dumps(body).encode(), headers=AUTH, timeout=60)
    assert r.status_code < 500, (body, r.text[:500])
    if r.status_code >= 400:
        assert_openai_error(r, r.status_code)
    assert "Traceback" not in logs.text, (body, logs.text[-3000:])


# -- the API key -----------------------------------------------------------------------------


def test_api_key_check_hashes_then_compares_fixed_size_digests(monkeypatch):
    seen = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        seen.append((type(a), len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.key_matches("k" * 10, "k" * 10)
    assert not auth.key_matches("k", "k" * 10)
    assert not auth.key_matches("ключ\udcff", KEY)  # non-ASCII and undecodable bytes: no TypeError
    assert not auth.key_matches(None, KEY)
    assert seen and all(s == (bytes, 32, 32) for s in seen)
    assert hashlib.sha256(b"x").digest_size == 32


def test_api_key_errors_are_401_for_any_header(server):
    url, _, logs = server
    for header in (b"Bearer wrong", b"Bearer \xff\xfe\xfd", "Bearer ключ".encode(), b"Basic " + KEY.encode(), b""):
        r = httpx.post(url + CHAT, content=json.dumps(user()).encode(),
                       headers=[(b"Authorization", header), (b"Content-Type", b"application/json")], timeout=30)
        assert_openai_error(r, 401, "API key")
    assert "Traceback" not in logs.text


@pytest.mark.parametrize("host,key,warns", [
    ("127.0.0.1", None, False), ("localhost", None, False), ("::1", None, False), ("127.0.0.2", None, False),
    ("0.0.0.0", None, True), ("::", None, True), ("192.168.1.10", None, True), ("mymac.local", None, True),
    ("0.0.0.0", "k", False),
])
def test_exposure_warning(host, key, warns):
    assert (auth.exposure_warning(host, key) is not None) == warns


def _serve_stderr(tiny_runtime, *args: str, env=None) -> str:
    """Start `gptoss serve`, read its stderr up to the 'serving' line, stop it."""
    proc = subprocess.Popen([sys.executable, "-m", "gptoss_metal.cli.main", "serve", str(tiny_runtime),
                             "--port", "0", *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=env)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "serving" in line:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return "".join(lines)


def test_serve_on_all_interfaces_without_a_key_warns(tiny_runtime):
    env = {k: v for k, v in os.environ.items() if k != "GPTOSS_API_KEY"}
    out = _serve_stderr(tiny_runtime, "--host", "0.0.0.0", env=env)
    assert "warning:" in out and "without --api-key" in out and "serving" in out
    out = _serve_stderr(tiny_runtime, "--host", "0.0.0.0", "--api-key", "k", env=env)
    assert "warning:" not in out and "serving" in out
    out = _serve_stderr(tiny_runtime, env=env)
    assert "warning:" not in out and "serving" in out


# -- tool schemas from Python ----------------------------------------------------------------


def test_schema_flattening_refuses_what_would_explode():
    t0 = time.monotonic()
    with pytest.raises(HarmonyIOError, match="more than 10000 nodes"):
        flatten_schema(REF_BOMB)
    assert time.monotonic() - t0 < 5
    deep: dict = {}
    for _ in range(3000):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(HarmonyIOError, match="nested too deeply"):
        flatten_schema(deep)
    cyclic = {"$ref": "#/$defs/n", "$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}}}
    assert "recursive" in json.dumps(flatten_schema(cyclic))


def test_socket_level_garbage_does_not_hurt(server):
    url, _, logs = server
    host, port = url.rsplit(":", 1)
    for raw in (b"GARBAGE\r\n\r\n", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{"):
        with socket.create_connection((host.replace("http://", ""), int(port)), timeout=5) as s:
            s.sendall(raw)
            try:
                s.recv(4096)
            except OSError:
                pass
    assert post(url, CHAT, user()).status_code == 200
    assert "Traceback" not in logs.text
