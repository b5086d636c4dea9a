"""The headers of every server-sent event stream (the API's and the chat page's): no caching, no proxy buffering."""

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
