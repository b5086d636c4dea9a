"""Request-body limits as ASGI middleware: what a request must be before any route sees it.

A body is refused with an OpenAI-shaped error, before it is parsed into request models, when it is
- larger than `max_body_bytes` (413; Content-Length is checked before reading, a chunked body
  while it arrives);
- not UTF-8, not JSON, or JSON nested deeper than `max_depth` (400): deep nesting costs recursion
  in every layer below (pydantic, schema flattening, the renderer);
- holding a lone UTF-16 surrogate (`"\\ud800"`, valid JSON but no text): the tokenizer cannot
  encode it (400);
- holding unbroken runs of letters, symbols or spaces so long that tokenizing them would stall the
  server: the tokenizer's byte-pair merge costs the square of a run's length (300 KB of "a" take
  minutes, 1 MB crashes it), so the sum of squared run lengths is capped (400).
Bodies that pass are handed on unchanged. Checking a large body runs in a worker thread.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # imported where used: `gptoss --help` reads DEFAULT_MAX_BODY_BYTES without loading Starlette
    from starlette.responses import JSONResponse
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_BYTES = 4 * 2**20  # holds any request that fits a 131072-token context several times over
DEFAULT_MAX_DEPTH = 64
# sum over runs of (UTF-8 bytes)**2: ~1 s of tokenizer time on a slow CPU; one run of ~44 KB at most
RUN_COST_BUDGET = 2 * 10**9
RUN_MIN_CHARS = 64
_RUNS = re.compile(r"[^\W\d_]{%d,}|[^\w\s]{%d,}|\s{%d,}" % ((RUN_MIN_CHARS,) * 3))
THREAD_ABOVE_BYTES = 64 * 1024


@dataclass
class BodyProblem:
    status: int
    message: str
    code: str
    param: Optional[str] = None

    def response(self) -> "JSONResponse":
        from starlette.responses import JSONResponse

        return JSONResponse({"error": {"message": self.message, "type": "invalid_request_error",
                                       "param": self.param, "code": self.code}}, status_code=self.status)


def _where(path: list[Any]) -> Optional[str]:
    return ".".join(str(p) for p in path) or None


class _Walk:
    """One pass over parsed JSON (iterative: depth is what is being checked)."""

    def __init__(self, max_depth: int):
        self.max_depth = max_depth
        self.run_cost = 0
        self.longest_run = 0

    def string(self, s: str, path: list[Any]) -> Optional[BodyProblem]:
        if not s.isascii():
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as e:
                return BodyProblem(400, f"The request holds a lone UTF-16 surrogate ({s[e.start]!r} at character "
                                   f"{e.start} of {_where(path) or 'a string'}), which is not text.",
                                   "invalid_unicode", _where(path))
        if len(s) >= RUN_MIN_CHARS:
            for m in _RUNS.finditer(s):
                n = len(m.group().encode("utf-8"))
                self.run_cost += n * n
                self.longest_run = max(self.longest_run, len(m.group()))
            if self.run_cost > RUN_COST_BUDGET:
                return BodyProblem(400, f"The request holds unbroken runs of letters, symbols or spaces too long to "
                                   f"tokenize in reasonable time (the longest is {self.longest_run} characters; the "
                                   f"tokenizer's cost grows with the square of a run's length). Break them up.",
                                   "run_too_long", _where(path))
        return None

    def __call__(self, value: Any) -> Optional[BodyProblem]:
        stack: list[tuple[Any, int, list[Any]]] = [(value, 1, [])]
        while stack:
            v, depth, path = stack.pop()
            if isinstance(v, str):
                problem = self.string(v, path)
                if problem:
                    return problem
            elif isinstance(v, (dict, list)):
                if depth > self.max_depth:
                    return BodyProblem(400, f"The request body's JSON is nested deeper than {self.max_depth} levels "
                                       f"(at {_where(path[:8])}...).", "nesting_too_deep")
                items = v.items() if isinstance(v, dict) else enumerate(v)
                for key, item in items:
                    if isinstance(key, str):
                        problem = self.string(key, path)
                        if problem:
                            return problem
                    stack.append((item, depth + 1, path + [key]))
        return None


def check_body(body: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Optional[BodyProblem]:
    """What is wrong with a JSON request body, or None."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return BodyProblem(400, f"The request body is not valid UTF-8 (byte {e.start}).", "invalid_utf8")
    try:
        value = json.loads(text)
    except RecursionError:
        return BodyProblem(400, f"The request body's JSON is nested deeper than {max_depth} levels.", "nesting_too_deep")
    except ValueError as e:
        return BodyProblem(400, f"The request body is not valid JSON ({e}).", "invalid_json")
    return _Walk(max_depth)(value)


class RequestLimits:
    """ASGI middleware applying `check_body` (and the size limit) to every HTTP request body."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 max_depth: int = DEFAULT_MAX_DEPTH):
        self.app, self.max_body_bytes, self.max_depth = app, max_body_bytes, max_depth

    def _too_large(self) -> BodyProblem:
        return BodyProblem(413, f"The request body is larger than this server accepts ({self.max_body_bytes} bytes; "
                           "see `gptoss serve --max-body-bytes`).", "request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large().response()(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large().response()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if body and (content_type == b"application/json" or content_type.endswith(b"+json")):
            if len(body) > THREAD_ABOVE_BYTES:
                import anyio

                problem = await anyio.to_thread.run_sync(check_body, body, self.max_depth)
            else:
                problem = check_body(body, self.max_depth)
            if problem is not None:
                await problem.response()(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: the client's disconnect, which streaming responses watch

        await self.app(scope, replay, send)
