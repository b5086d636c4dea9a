"""The server of the soak test, in a process of its own: the real app on the tiny checkpoint, plus
one route the test reads (live asyncio tasks, threads, resident memory, queue state).

    python soak_server.py MODEL_DIR PORT
"""

from __future__ import annotations

import asyncio
import resource
import sys
import threading

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
    model_dir, port = sys.argv[1], int(sys.argv[2])
    service = OpenAIService(Engine(load(model_dir), model_id="tiny"), default_max_tokens=16,
                            current_date="2026-11-23")
    app = create_app(service, api_key=API_KEY)

    @app.get("/_soak/counters")
    async def counters() -> dict:
        return {"tasks": len(asyncio.all_tasks()), "threads": threading.active_count(), "rss": rss_bytes(),
                "pending": service.scheduler.pending, "running": service.scheduler.running is not None}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
