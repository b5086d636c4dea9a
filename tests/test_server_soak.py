"""Soak: 8 concurrent clients against the real server on the tiny checkpoint for a while (CI: 60 s;
GPTOSS_SOAK_SECONDS=300 for a longer run), mixing both endpoints, streaming or not, random
max_tokens, random disconnects and some bad requests. Afterwards every request got a complete answer
or a proper error, the server's memory is flat, no asyncio task or thread was left behind, nothing
was logged as a traceback, and a final request is served normally.

The server runs in a process of its own (tests/soak_server.py) so its memory, threads and tasks
are its own, not the clients'.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from serving import Output, stop_process

SECONDS = float(os.environ.get("GPTOSS_SOAK_SECONDS", "60"))
CLIENTS = 8
# Resident memory may settle a little higher after the first minutes (allocator arenas, MLX's buffer
# cache, the bounded stores of exact history and responses filling up); a leak grows with the
# number of requests. Allowed: 32 MiB or 10% of the start, whichever is larger.
RSS_TOLERANCE_BYTES = 32 * 2**20
RSS_TOLERANCE_FRACTION = 0.10
HEADERS = {"Authorization": "Bearer soak"}


def counters(url: str) -> dict:
    return httpx.get(url + "/_soak/counters", timeout=30).json()


def idle_counters(url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        c = counters(url)
        if (c["pending"] == 0 and not c["running"]) or time.monotonic() > deadline:
            return c
        time.sleep(0.2)


class Client(threading.Thread):
    """One client: requests of a random kind until the deadline; every outcome is classified."""

    def __init__(self, url: str, seed: int, deadline: float):
        super().__init__(name=f"soak-client-{seed}")
        self.url, self.rng, self.deadline = url, random.Random(seed), deadline
        self.outcomes: Counter = Counter()
        self.failures: list[str] = []

    def fail(self, what: str) -> None:
        self.outcomes["FAILED"] += 1
        if len(self.failures) < 10:
            self.failures.append(what)

    def body(self, endpoint: str, stream: bool) -> tuple[dict, str]:
        rng = self.rng
        text = " ".join(rng.choice(["tell", "me", "about", "the", "sea", "why", "numbers", "42", "é", "日本"])
                        for _ in range(rng.randint(1, 30)))
        limit = rng.randint(1, 32)
        bad = rng.random() < 0.05
        if endpoint == "chat":
            body = {"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": limit,
                    "stream": stream, "seed": rng.randint(0, 10**6)}
            if stream and rng.random() < 0.5:
                body["stream_options"] = {"include_usage": True}
            if bad:
                body["n"] = 2
        else:
            body = {"model": "tiny", "input": text, "max_output_tokens": limit, "stream": stream,
                    "reasoning": {"effort": rng.choice(["low", "medium", "high"])}}
            if bad:
                body["max_output_tokens"] = -1
        return body, ("bad" if bad else "good")

    def check_error(self, r: httpx.Response, kind: str) -> None:
        try:
            err = r.json()["error"]
            assert err["message"] and err["type"]
        except Exception:  # noqa: BLE001
            self.fail(f"{r.status_code} without an OpenAI error body: {r.text[:200]}")
            return
        if r.status_code >= 500:
            self.fail(f"{r.status_code}: {err['message']}")
        elif kind == "bad" or r.status_code == 429:
            self.outcomes["proper error"] += 1
        else:
            self.fail(f"a good request got {r.status_code}: {err['message']}")

    def one(self, client: httpx.Client) -> None:
        rng = self.rng
        endpoint = rng.choice(["chat", "responses"])
        stream = rng.random() < 0.5
        disconnect = rng.random() < 0.2
        body, kind = self.body(endpoint, stream)
        path = "/v1/chat/completions" if endpoint == "chat" else "/v1/responses"
        if not stream:
            timeout = rng.uniform(0.02, 0.5) if disconnect else 120
            try:
                r = client.post(self.url + path, json=body, headers=HEADERS, timeout=timeout)
            except httpx.TimeoutException:
                self.outcomes["disconnected"] += 1
                return
            if r.status_code != 200:
                self.check_error(r, kind)
                return
            data = r.json()
            done = (data["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls") if endpoint == "chat"
                    else data["status"] in ("completed", "incomplete"))
            self.outcomes["complete"] += 1 if done and kind == "good" else 0
            if not done or kind == "bad":
                self.fail(f"incomplete answer: {str(data)[:200]}")
            return
        with client.stream("POST", self.url + path, json=body, headers=HEADERS, timeout=120) as r:
            if r.status_code != 200:
                r.read()
                self.check_error(r, kind)
                return
            leave_after = rng.randint(1, 6) if disconnect else None
            events, last = 0, None
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                events += 1
                last = line[5:].strip()
                if leave_after is not None and events >= leave_after:
                    self.outcomes["disconnected"] += 1
                    return  # leaving the block closes the connection mid-stream
        if endpoint == "chat":
            done = last == "[DONE]"
        else:
            done = last is not None and json.loads(last)["type"] in ("response.completed", "response.incomplete")
        if done:
            self.outcomes["complete"] += 1
        else:
            self.fail(f"stream ended without its final event (last: {str(last)[:200]})")

    def run(self) -> None:
        with httpx.Client() as client:
            while time.monotonic() < self.deadline:
                try:
                    self.one(client)
                except Exception as e:  # noqa: BLE001 - anything unexpected is a failure to report
                    self.fail(f"{type(e).__name__}: {e}")


@pytest.mark.slow
def test_soak(tiny_runtime, tmp_path):
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("soak_server.py")), str(tiny_runtime)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = Output(server)
    try:
        port = out.wait_for(r"^port (\d+)").group(1)
        url = f"http://127.0.0.1:{port}"
        warmup = Client(url, seed=-1, deadline=time.monotonic() + 5)
        warmup.run()
        start = idle_counters(url)
        clients = [Client(url, seed=i, deadline=time.monotonic() + SECONDS) for i in range(CLIENTS)]
        t0 = time.monotonic()
        for c in clients:
            c.start()
        for c in clients:
            c.join(timeout=SECONDS + 300)
        elapsed = time.monotonic() - t0
        assert not any(c.is_alive() for c in clients), "a client hung"
        end = idle_counters(url)
        settle = time.monotonic() + 30  # finished requests' tasks end, idle pool threads retire
        while (end["tasks"] > start["tasks"] or end["threads"] > start["threads"]) and time.monotonic() < settle:
            time.sleep(0.5)
            end = counters(url)
        outcomes = sum((c.outcomes for c in clients), Counter())
        failures = [f for c in clients for f in c.failures]
        final = httpx.post(url + "/v1/chat/completions", headers=HEADERS, timeout=60,
                           json={"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5})
        summary = {"seconds": round(elapsed, 1), "clients": CLIENTS, "requests": sum(outcomes.values()), **outcomes,
                   "rss_start_mib": round(start["rss"] / 2**20, 1), "rss_end_mib": round(end["rss"] / 2**20, 1),
                   "tasks": (start["tasks"], end["tasks"]), "threads": (start["threads"], end["threads"])}
        print(f"\nsoak: {json.dumps(summary)}")
        assert not failures, failures
        assert outcomes["complete"] >= CLIENTS * 2 and outcomes["disconnected"] > 0
        assert end["tasks"] <= start["tasks"], summary
        assert end["threads"] <= start["threads"], summary
        assert end["rss"] <= start["rss"] + max(RSS_TOLERANCE_BYTES, RSS_TOLERANCE_FRACTION * start["rss"]), summary
        assert final.status_code == 200 and final.json()["choices"][0]["finish_reason"] in ("stop", "length")
        assert server.poll() is None
    finally:
        stop_process(server)
    text = out.finish()
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text[-3000:]
