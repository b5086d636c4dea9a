"""Run the real app under uvicorn on 127.0.0.1 and a free port, in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
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
