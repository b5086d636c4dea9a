"""Running one child process under a memory cap: a Linux memory cgroup (v1 controller).

The cap is a cgroup created inside this process's own memory cgroup (so every limit above still
applies), holding only the child: the shell that starts it moves itself in, then execs the command.
Page cache counts against a v1 cgroup but is reclaimed before anything is killed; anonymous memory
beyond the limit is not, and the kernel's OOM killer ends the child (no swap on these machines, and
`memory.memsw` caps swap too where it exists).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

V1 = Path("/sys/fs/cgroup/memory")
WORKER = Path(__file__).with_name("memory_worker.py")
_serial = itertools.count()


def own_cgroup() -> Optional[Path]:
    """This process's memory cgroup folder (v1), if the controller is mounted."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                folder = V1 / path.lstrip("/")
                return folder if folder.is_dir() else None
    except OSError:
        return None
    return None


def unavailable() -> Optional[str]:
    """Why capped runs cannot happen here (None: they can)."""
    parent = own_cgroup()
    if parent is None:
        return f"no cgroup v1 memory controller mounted at {V1}"
    probe = parent / f"gptoss-probe-{os.getpid()}"
    try:
        probe.mkdir()
        (probe / "memory.limit_in_bytes").write_text(str(2**30))
    except OSError as e:
        return f"cannot create a memory cgroup under {parent} ({e.strerror}; needs root)"
    finally:
        if probe.is_dir():
            probe.rmdir()
    return None


@dataclass
class CappedRun:
    returncode: int
    stdout: str
    stderr: str
    limit: int
    max_usage: int
    oom_kills: int

    @property
    def killed(self) -> bool:
        return self.returncode == -9 or self.oom_kills > 0

    def report(self) -> dict:
        """The worker's JSON line."""
        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        assert lines, f"no report (exit {self.returncode}):\n{self.stderr[-3000:]}"
        return json.loads(lines[-1])


def run_capped(cmd: list[str], limit: int, timeout: float) -> CappedRun:
    """`cmd` alone in a new memory cgroup of `limit` bytes (inside ours); removed afterwards."""
    parent = own_cgroup()
    assert parent is not None, unavailable()
    cg = parent / f"gptoss-cap-{os.getpid()}-{next(_serial)}"
    cg.mkdir()
    try:
        (cg / "memory.limit_in_bytes").write_text(str(limit))
        try:
            (cg / "memory.memsw.limit_in_bytes").write_text(str(limit))  # no escape into swap
        except OSError:
            pass  # no swap accounting: nothing to escape into
        out = subprocess.run(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cg), *cmd],
                             capture_output=True, text=True, timeout=timeout)
        events = dict(line.split() for line in (cg / "memory.oom_control").read_text().splitlines())
        return CappedRun(out.returncode, out.stdout, out.stderr, limit,
                         int((cg / "memory.max_usage_in_bytes").read_text()), int(events.get("oom_kill", 0)))
    finally:
        _remove(cg)


def _remove(cg: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            cg.rmdir()
            return
        except OSError:  # the child's exit is still being accounted
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def worker(model: Path, *args: str) -> list[str]:
    """The command line of tests/memory_worker.py with this interpreter."""
    return [sys.executable, str(WORKER), str(model), *args]


def weight_bytes(model: Path) -> int:
    return sum(p.stat().st_size for p in Path(model).glob("*.safetensors"))
