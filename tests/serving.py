"""Run the real app under uvicorn on 127.0.0.1 and a free port, in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import uvicorn

from gptoss_metal.server.app import create_app
from gptoss_metal.server.openai_api import OpenAIService


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(service: OpenAIService, api_key: Optional[str] = None, app: Any = None,
                port: Optional[int] = None) -> Iterator[str]:
    """Serve `app` (default: the API of `service`) until the block ends."""
    port = port or free_port()
    config = uvicorn.Config(app or create_app(service, api_key=api_key), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        service.scheduler.close()


def gptoss_command(*args: str) -> list[str]:
    """The `gptoss` console script, run by this interpreter (the venv's)."""
    import sys

    return [sys.executable, "-c", "from gptoss_metal.cli.main import main; main()", *args]


@contextmanager
def gptoss_serve(model: Path, data_dir: Path, *extra: str, command: str = "serve", port: Optional[int] = None,
                 env: Optional[dict] = None) -> Iterator[str]:
    """`gptoss serve MODEL` (or `app`) in a subprocess on 127.0.0.1; yields its URL once /health answers."""
    import os
    import subprocess

    import httpx

    port = port or free_port()
    proc = subprocess.Popen(gptoss_command(command, str(model), "--port", str(port), "--data-dir", str(data_dir),
                                           *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"gptoss {command} did not start:\n{proc.communicate()[0]}")
            time.sleep(0.2)
        yield url
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM (what a user's Ctrl-C or a service manager sends), SIGKILL if it has not ended in 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
