"""One model, many requests: a FIFO queue in front of a single worker thread.

Generations never overlap (they share the engine's KV cache), requests are served in arrival
order, the queue is bounded (callers turn `QueueFull` into 429), and a job can be cancelled at
any time: the worker checks between tokens, so a vanished client frees the model within a token
or two. Items cross from the worker thread to the asyncio side through `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable, Optional

END = object()


class QueueFull(Exception):
    pass


class Job:
    def __init__(self, work: Callable[["Job"], None], loop: asyncio.AbstractEventLoop):
        self.work = work
        self.loop = loop
        self.items: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def put(self, item: Any) -> None:
        """Worker side: hand an item to the waiting request."""
        self.loop.call_soon_threadsafe(self.items.put_nowait, item)

    def cancel(self) -> None:
        self.cancelled.set()

    async def get(self, timeout: Optional[float] = None) -> Any:
        if timeout is None:
            return await self.items.get()
        return await asyncio.wait_for(self.items.get(), timeout)


class Scheduler:
    def __init__(self, max_queue: int = 64):
        self.max_queue = max_queue
        self._queue: "queue.Queue[Optional[Job]]" = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self.running: Optional[Job] = None
        self._thread = threading.Thread(target=self._run, name="gptoss-worker", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, work: Callable[[Job], None]) -> Job:
        job = Job(work, asyncio.get_running_loop())
        with self._lock:
            if self._pending >= self.max_queue:
                raise QueueFull(f"{self._pending} requests are waiting (limit {self.max_queue})")
            self._pending += 1
        self._queue.put(job)
        return job

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._pending -= 1
            if job.cancelled.is_set():
                job.put(END)
                continue
            self.running = job
            try:
                job.work(job)
            except BaseException as e:  # noqa: BLE001 - delivered to the request, which decides
                job.put(e)
            finally:
                self.running = None
                job.put(END)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what runs and waits, stop the worker (a generation ends within a token)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                job.put(END)
        if self.running is not None:
            self.running.cancel()
        self._queue.put(None)
        self._thread.join(timeout)
