"""Runs the python tool in a process of its own, for tests that must survive broken containment.

    python sandbox_driver.py '{"namespaces": true, "max_processes": 16}'

Runs a fork bomb in the tool and prints one JSON line: what happened, the peak number of live
processes the sandbox held, and which of its processes were left afterwards. The test runs this
under an outer limit (its own session, killed at the end, a wall-clock timeout, prlimit), and the
bomb bounds itself too (2**9 = 512 processes at most), so a broken containment cannot take the
machine down.
Works with the system's python3 as an unprivileged user (stdlib + the tools package only).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from gptoss_metal.assistant.tools import processes
from gptoss_metal.assistant.tools.python_tool import PythonTool, PythonToolLimits

BOMB = """
import os, time
for _ in range(9):  # at most 2**9 = 512 processes even if nothing stops it
    try:
        if os.fork() == 0:
            continue
    except OSError:
        break
time.sleep(60)
"""


def marked(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a sandbox's folder: the interpreter, its
    supervisor and init, and every copy of it the code forked)."""
    out = []
    for pid in processes.process_table(live_only=True):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    out.append(pid)
        except OSError:
            continue
    return out


def main() -> None:
    args = json.loads(sys.argv[1])
    tool = PythonTool(PythonToolLimits(timeout_s=args.get("timeout_s", 4.0), max_processes=args.get("max_processes", 32)),
                      namespaces=args.get("namespaces", True))
    tool.run("0")
    work = str(tool.work_dir)
    pid = tool.pid
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], len(processes.descendants(pid, live_only=True)))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.monotonic()
    out = tool.run(BOMB)
    seconds = time.monotonic() - t0
    stop.set()
    sampler.join()
    time.sleep(0.2)
    left_after_call = marked(work)
    after = tool.run("1 + 1")
    work2 = str(tool.work_dir)
    tool.close()
    time.sleep(0.2)
    print(json.dumps({"status": out.status, "text": out.text[-300:], "seconds": seconds, "peak": peak[0],
                      "left_after_call": left_after_call, "after": after.text, "left_after_close": marked(work2),
                      "containment": tool.containment, "uid": os.getuid()}))


if __name__ == "__main__":
    main()
