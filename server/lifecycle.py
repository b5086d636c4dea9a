"""Running a local server until Ctrl-C or SIGTERM, and ending it quickly and quietly.

The first Ctrl-C (or SIGTERM): one line is printed, the server stops accepting connections, every
generation and chat-page turn is cancelled (the decode thread drops them at its next step), open streams
end properly (an error event saying the server is shutting down, then the stream's own end), and the
process exits -- within about two seconds. A second Ctrl-C forces: nothing more is waited for. Neither
prints a traceback: the signals are handled here (uvicorn's own handling re-raises them afterwards).
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import uvicorn

from .assembly import LocalServer

GRACE_S = 2.0  # open connections get this long to finish after the cancellations


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_first_signal: Callable[[int], None]):
        super().__init__(config)
        self.on_first_signal = on_first_signal
        self.first_signal: Optional[int] = None

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame) -> None:
        if self.should_exit:
            self.force_exit = True
            return
        self.should_exit = True
        self.first_signal = sig
        self.on_first_signal(sig)


def serve(local: LocalServer, host: str, port: int, *, on_started: Callable[[int], None],
          say: Callable[[str], None]) -> int:
    """Serve until a signal ends it; the exit status (130 after Ctrl-C, 0 after SIGTERM)."""

    def first_signal(sig: int) -> None:
        say("shutting down (Ctrl-C again to force)")
        local.shutdown()

    config = uvicorn.Config(local.app, host=host, port=port, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=GRACE_S)
    server = _Server(config, first_signal)

    def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.05)
        on_started(server.servers[0].sockets[0].getsockname()[1] if server.servers else port)

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run()
    finally:
        local.close(timeout=0.5 if server.force_exit else GRACE_S)
    if server.first_signal is None:
        return 0
    return 130 if server.first_signal == signal.SIGINT else 0
