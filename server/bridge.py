"""Items made on other threads, delivered into the server's event loop: nothing on the path polls.

The decode thread (an API generation's events) and a chat-page turn's thread (its events, tool results)
push items with `loop.call_soon_threadsafe`; the route awaits them. A push after the loop has closed
(the server went away first) is dropped: nobody is left to read it.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Inbox:
    """An asyncio queue that other threads push into."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self.loop = loop or asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def push(self, item: Any) -> None:
        """Any thread: hand over one item (never blocks)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server has gone
            pass

    async def get(self) -> Any:
        return await self.queue.get()


async def until_disconnected(receive) -> None:
    """Returns when the client hangs up (ASGI `http.disconnect`). For a request whose body was read: the
    next message the server sends it is the disconnect, so awaiting it costs nothing until then."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_watched(work, receive, cancel) -> Any:
    """Await `work` (a coroutine); if the client hangs up first, call `cancel()` (which makes `work` end
    within a step) and still await it, so its cleanup runs before the route returns."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if watcher in done:
            cancel()
        return await task
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
