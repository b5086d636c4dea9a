"""A request's stop: set once, from any thread; whatever runs for the request hears it at once.

A page's stop button, a client that hung up, a timeout and shutdown all set the same signal. What
runs for the request links itself to it (`on_set`): a generation's handle cancels at the decode
thread's next step, and a chat turn checks it between its generations and tool calls. Nothing polls.
"""

from __future__ import annotations

import threading
from typing import Callable


class StopSignal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        with self._lock:
            if self._set:
                return
            self._set = True
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb()

    def is_set(self) -> bool:
        return self._set

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when the signal is set (now, if it is already); returns a function that unlinks it."""
        with self._lock:
            if not self._set:
                self._callbacks.append(callback)
                return lambda: self._unlink(callback)
        callback()
        return lambda: None

    def _unlink(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)
