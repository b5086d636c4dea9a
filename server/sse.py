"""Server-sent events: the one place their lines are framed (API streams and the chat page's turns)."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from fastapi.responses import StreamingResponse

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"


def data(payload: Any) -> str:
    """One `data:` event (Chat Completions chunks, the page's events)."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def typed(payload: dict[str, Any]) -> str:
    """One event named by its payload's `type` (the Responses API's shape)."""
    return f"event: {payload['type']}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


def response(lines: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(lines, media_type="text/event-stream", headers=HEADERS)
