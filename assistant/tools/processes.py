"""The process table, read from the parent's side of the python tool (Linux /proc, else `ps`).

Used where the sandbox has no pid namespace: its processes are then found as descendants of the
interpreter (a child subreaper on Linux, so orphans stay in its tree) and killed one by one.
Stdlib only and import-free, like sandbox_paths: the sandboxed child (Linux) imports it by file
path too, to count the user's tasks where it has no user namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def _stat(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state, parent pid, ...); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields if len(fields) > 1 else None


def _live(fields: list[bytes]) -> bool:
    return fields[0] not in (b"Z", b"X")  # zombies: dead, not yet collected by their parent


def _linux_table(live_only: bool = False) -> dict[int, int]:
    """pid -> parent pid of every process (without zombies if `live_only`)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat(name)
        if fields is not None and (not live_only or _live(fields)):
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


def parent_of(pid: int, live_only: bool = False) -> int | None:
    """The parent pid of `pid`; None if there is no such process (or, with `live_only`, it is a zombie)."""
    if not sys.platform.startswith("linux"):
        return _ps_table().get(pid)
    fields = _stat(pid)
    if fields is None or (live_only and not _live(fields)):
        return None
    return int(fields[1])


def descendants(pid: int, live_only: bool = False) -> list[int]:
    """Every process below `pid` in the tree (children, their children, ...), not `pid` itself."""
    children: dict[int, list[int]] = {}
    for p, parent in process_table(live_only).items():
        children.setdefault(parent, []).append(p)
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def kill_descendants(pid: int) -> None:
    """SIGKILL everything below `pid` until nothing is left (a fork bomb refills while we kill; at
    most 100 rounds). `pid` should be stopped or unable to fork meanwhile."""
    for _ in range(100):
        found = descendants(pid, live_only=True)
        if not found:
            break
        for p in found:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.005)


def user_tasks(uid: int, exclude_pid: int | None = None) -> int:
    """How many tasks (Linux: threads; macOS: processes) the user runs now: what RLIMIT_NPROC counts;
    `exclude_pid`'s own are left out (the sandbox's interpreter counting everything but itself)."""
    if sys.platform.startswith("linux"):
        total = 0
        for name in os.listdir("/proc"):
            if not name.isdigit() or name == str(exclude_pid):
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
    return len([p for p in out.split() if p != str(exclude_pid)])
