"""One line per request: what was asked, how it ended, and what the model did for it.

    POST /v1/chat/completions 200 0.84s prompt=212 cached=180 generated=57 41.3tok/s ttft=0.09s finish=stop

ASGI middleware (pure: disconnects stay visible to the routes). A route that ran a generation leaves its
figures in the request's state (`request.state.figures`); the line is written when the response ends,
to the `gptoss.server` logger (stderr; `gptoss serve --log-level`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("gptoss.server")


def line(method: str, path: str, status: Any, seconds: float, figures: dict[str, Any]) -> str:
    text = f"{method} {path} {status} {seconds:.2f}s"
    if figures:
        text += (f" prompt={figures['prompt']} cached={figures['cached']} generated={figures['generated']} "
                 f"{figures['tps']:.1f}tok/s ttft={figures['ttft']:.2f}s finish={figures['finish']}")
    return text


class RequestLog:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: list[Any] = ["-"]  # a client that left before the response began

        async def send_seen(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        scope.setdefault("state", {})
        try:
            await self.app(scope, receive, send_seen)
        finally:
            figures = scope["state"].get("figures") or {}
            level = logging.ERROR if isinstance(status[0], int) and status[0] >= 500 else logging.INFO
            log.log(level, line(scope["method"], scope.get("path", ""), status[0], time.perf_counter() - started,
                                figures))
