"""The server of the soak test, in a process of its own: the real app on the tiny checkpoint, plus
one route the test reads (live asyncio tasks, threads, resident memory, queue state).

    python soak_server.py MODEL_DIR      (prints "port N" once it listens on 127.0.0.1:N, an OS-chosen port)
"""

from __future__ import annotations

import asyncio
import resource
import socket
import sys
import threading
import time

import uvicorn

from gptoss_metal.assistant import Engine
from gptoss_metal.metal_runtime import load
from gptoss_metal.server.app import create_app
from gptoss_metal.server.openai_api import OpenAIService

API_KEY = "soak"


def rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: bytes, and the peak only


def main() -> None:
    model_dir = sys.argv[1]
    service = OpenAIService(Engine(load(model_dir), model_id="tiny"), default_max_tokens=16,
                            current_date="2026-11-23")
    app = create_app(service, api_key=API_KEY)

    @app.get("/_soak/counters")
    async def counters() -> dict:
        return {"tasks": len(asyncio.all_tasks()), "threads": threading.active_count(), "rss": rss_bytes(),
                "pending": service.engine.waiting, "running": service.engine.active > 0}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=_announce, args=(server, sock.getsockname()[1]), daemon=True).start()
    server.run(sockets=[sock])


def _announce(server: uvicorn.Server, port: int) -> None:
    while not server.started:
        time.sleep(0.02)
    print(f"port {port}", flush=True)


if __name__ == "__main__":
    main()
