"""Servers for tests: the real app under uvicorn in this process, or `gptoss serve` in a subprocess.

Ports are the OS's choice and are never released and re-bound by someone else in between: the in-process
server is handed the very socket that was bound, and `gptoss serve --port 0` says which port it got.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import uvicorn

from gptoss_metal.server.app import create_app
from gptoss_metal.server.openai_api import OpenAIService

START_S = 180  # a deadline for a broken server, never a timing


def bound_socket() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


@contextmanager
def live_server(service: Optional[OpenAIService] = None, api_key: Optional[str] = None, app: Any = None) -> Iterator[str]:
    """Serve `app` (default: the API of `service`) until the block ends."""
    sock = bound_socket()
    config = uvicorn.Config(app or create_app(service, api_key=api_key), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def gptoss_command(*args: str) -> list[str]:
    """The `gptoss` console script, run by this interpreter (the venv's)."""
    return [sys.executable, "-c", "from gptoss_metal.cli.main import main; main()", *args]


class Output:
    """A subprocess's output lines, read as they come (a thread), waited for by pattern."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self.lines.append(None)  # the end
            self._cv.notify_all()

    def wait_for(self, pattern: str, timeout: float = START_S) -> re.Match:
        regex, seen = re.compile(pattern), 0
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for line in self.lines[seen:]:
                    if line is None:
                        raise RuntimeError(f"the process ended first:\n{self.text}")
                    m = regex.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no line matched {pattern!r}:\n{self.text}")
                self._cv.wait(left)

    def finish(self, timeout: float = 30) -> str:
        """All of the output, once the process has closed it."""
        with self._cv:
            self._cv.wait_for(lambda: self.lines and self.lines[-1] is None, timeout)
        return self.text

    @property
    def text(self) -> str:
        return "".join(line for line in self.lines if line is not None)


SERVING = r"serving .*: chat page (http://[^ ]+?)/ "


@contextmanager
def gptoss_serve(model: Path, data_dir: Path, *extra: str, command: str = "serve", port: int = 0,
                 env: Optional[dict] = None) -> Iterator[str]:
    """`gptoss serve MODEL` (or `app`) in a subprocess on 127.0.0.1; yields its URL once it serves."""
    import os

    proc = subprocess.Popen(gptoss_command(command, str(model), "--port", str(port), "--data-dir", str(data_dir),
                                           *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    out = Output(proc)
    try:
        try:
            url = out.wait_for(SERVING).group(1)
        except RuntimeError:
            proc.kill()
            raise
        yield url
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM (what a service manager sends), SIGKILL if it has not ended in 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
