"""The process table, read from the parent's side of the python tool (Linux /proc, else `ps`).

Used where the sandbox has no pid namespace: its processes are then found as descendants of the
interpreter (a child subreaper on Linux, so orphans stay in its tree) and killed one by one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def _linux_table(live_only: bool = False) -> dict[int, int]:
    """pid -> parent pid of every process (without zombies if `live_only`)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2:].split()  # the command name may hold spaces and parentheses
        if len(fields) > 1 and not (live_only and fields[0] in (b"Z", b"X")):
            table[int(name)] = int(fields[1])
    return table


def _ps_table() -> dict[int, int]:
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    table = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            table[int(parts[0])] = int(parts[1])
    return table


def process_table(live_only: bool = False) -> dict[int, int]:
    """pid -> parent pid; `live_only` leaves out zombies (dead, not yet collected by their parent)."""
    return _linux_table(live_only) if sys.platform.startswith("linux") else _ps_table()


def descendants(pid: int, table: dict[int, int] | None = None, live_only: bool = False) -> list[int]:
    """Every process below `pid` in the tree (children, their children, ...), not `pid` itself."""
    table = process_table(live_only) if table is None else table
    children: dict[int, list[int]] = {}
    for p, parent in table.items():
        children.setdefault(parent, []).append(p)
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def kill_descendants(pid: int, rounds: int = 100) -> int:
    """SIGKILL everything below `pid` until nothing is left (a fork bomb refills while we kill);
    returns how many kills were sent. `pid` should be stopped or unable to fork meanwhile."""
    sent = 0
    for _ in range(rounds):
        found = descendants(pid, live_only=True)
        if not found:
            break
        for p in found:
            try:
                os.kill(p, signal.SIGKILL)
                sent += 1
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.005)
    return sent


def user_tasks(uid: int) -> int:
    """How many tasks (Linux: threads; macOS: processes) the user runs now: what RLIMIT_NPROC counts."""
    if sys.platform.startswith("linux"):
        total = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:
                continue
            try:
                if int(fields["Uid"].split()[0]) == uid:
                    total += int(fields["Threads"].strip())
            except (KeyError, ValueError, IndexError):
                continue
        return total
    try:
        out = subprocess.run(["ps", "-U", str(uid), "-o", "pid="], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return len(out.split())
