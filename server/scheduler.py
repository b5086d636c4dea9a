"""One model, many requests: a FIFO queue in front of `workers` worker threads.

Each worker runs one job at a time (a generation, or a chat turn with its tools); the engine decodes
the generations of all workers together (assistant/decode_loop.py), so `workers` is the engine's
`max_sequences`. Requests start in arrival order, the queue is bounded (callers turn `QueueFull`
into 429), and a job can be cancelled at any time: the engine checks between tokens, so a vanished
client frees its sequence within a token or two. Items cross from the worker threads to the asyncio
side through `call_soon_threadsafe`.
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
    def __init__(self, max_queue: int = 64, workers: int = 1):
        self.max_queue = max_queue
        self._queue: "queue.Queue[Optional[Job]]" = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._running: set[Job] = set()
        self._threads = [threading.Thread(target=self._run, name=f"gptoss-worker-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    @property
    def running(self) -> Optional[Job]:
        """A job being run now (None when every worker is idle)."""
        with self._lock:
            return next(iter(self._running), None)

    @property
    def running_count(self) -> int:
        return len(self._running)

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
            with self._lock:
                self._running.add(job)
            try:
                job.work(job)
            except BaseException as e:  # noqa: BLE001 - delivered to the request, which decides
                job.put(e)
            finally:
                with self._lock:
                    self._running.discard(job)
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
        with self._lock:
            for job in self._running:
                job.cancel()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)
