"""The built-in `python` tool: a stateful interpreter in a separate, contained process.

What it protects against (see sandbox_child.py for the mechanisms):
- runaway code: a wall-clock timeout per call, CPU-seconds and memory (address space) limits,
  a file-size limit, and output truncation; a crash or kill restarts a fresh interpreter;
- writes outside its own temporary working folder (Linux: Landlock; macOS: sandbox-exec);
- network access (Linux: an empty network namespace where unprivileged user namespaces are
  allowed, plus Landlock's TCP rules on kernels >= 6.7; macOS: sandbox-exec).
What it does NOT protect against:
- reading files your user can read (the model can read your home folder and print it);
- kernels without Landlock / user namespaces, where only the resource limits apply (`containment`
  says what was applied);
- CPU and memory pressure up to the limits, or local-only resources such as UNIX sockets on older kernels.
Run untrusted models' tool calls only if that is acceptable for your files.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CHILD = Path(__file__).with_name("sandbox_child.py")

MACOS_PROFILE = """(version 1)
(allow default)
(deny network*)
(deny file-write*)
(allow file-write* (subpath "{work}") (subpath "{io}") (literal "/dev/null") (literal "/dev/dtracehelper"))
"""


@dataclass
class ToolOutput:
    text: str
    status: str  # "ok" | "error" | "timeout" | "crashed"


@dataclass
class PythonToolLimits:
    timeout_s: float = 30.0
    memory_mb: int = 1024
    cpu_seconds: int = 60
    file_mb: int = 64
    max_output: int = 16_000


class PythonTool:
    """One interpreter per conversation; state (variables, imports, files) persists between calls."""

    name = "python"

    def __init__(self, limits: Optional[PythonToolLimits] = None):
        self.limits = limits or PythonToolLimits()
        self._proc: Optional[subprocess.Popen] = None
        self._root: Optional[Path] = None
        self._req = self._resp = None
        self.containment: dict = {}
        self.restarts = 0

    @property
    def work_dir(self) -> Optional[Path]:
        return None if self._root is None else self._root / "work"

    def _start(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="gptoss-python-"))
        work, io_dir = self._root / "work", self._root / "io"
        work.mkdir()
        io_dir.mkdir()
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        use_sandbox_exec = sys.platform == "darwin" and shutil.which("sandbox-exec") is not None
        cfg = {
            "req_fd": req_r, "resp_fd": resp_w, "work_dir": str(work), "io_dir": str(io_dir),
            "memory_mb": self.limits.memory_mb, "cpu_seconds": self.limits.cpu_seconds,
            "file_mb": self.limits.file_mb, "max_output": self.limits.max_output,
            "sandbox_exec": use_sandbox_exec,
        }
        cmd = [sys.executable, "-I", "-B", str(CHILD), json.dumps(cfg)]
        if use_sandbox_exec:
            profile = MACOS_PROFILE.format(work=os.path.realpath(work), io=os.path.realpath(io_dir))
            cmd = ["sandbox-exec", "-p", profile] + cmd
        self._proc = subprocess.Popen(
            cmd, pass_fds=(req_r, resp_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd=work, start_new_session=True,
        )
        os.close(req_r)
        os.close(resp_w)
        self._req = os.fdopen(req_w, "w", encoding="utf-8")
        self._resp = os.fdopen(resp_r, "r", encoding="utf-8")
        hello = self._read_reply(timeout=30.0)
        if hello is None or not hello.get("ready"):
            self._kill()
            raise RuntimeError("the python tool's interpreter failed to start")
        self.containment = hello.get("containment", {})

    def _read_reply(self, timeout: float) -> Optional[dict]:
        deadline = time.monotonic() + timeout
        fd = self._resp.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                line = self._resp.readline()
                if not line:
                    return {"eof": True}
                return json.loads(line)

    def _kill(self) -> None:
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
            self._proc.wait()
        for f in (self._req, self._resp):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
        self._proc = self._req = self._resp = None
        self._root = None

    def run(self, code: str) -> ToolOutput:
        """Execute code; never raises for anything the code does."""
        note = ""
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                self._kill()
                self.restarts += 1
                note = "[the interpreter had exited; a fresh one was started and earlier state is lost]\n"
            self._start()
        try:
            self._req.write(json.dumps({"code": code}) + "\n")
            self._req.flush()
        except (BrokenPipeError, OSError):
            reply: Optional[dict] = {"eof": True}
        else:
            reply = self._read_reply(self.limits.timeout_s)
        if reply is None:
            self._kill()
            self.restarts += 1
            return ToolOutput(note + f"Timeout: execution exceeded {self.limits.timeout_s:g} s; the interpreter "
                              "was restarted and its state is lost.", "timeout")
        if reply.get("eof"):
            code_ = self._proc.wait() if self._proc else None
            self._kill()
            self.restarts += 1
            why = f"signal {-code_}" if code_ is not None and code_ < 0 else f"exit status {code_}"
            return ToolOutput(note + f"The interpreter stopped ({why}; limits: {self.limits.memory_mb} MB, "
                              f"{self.limits.cpu_seconds} CPU s). A fresh one will run the next call; "
                              "earlier state is lost.", "crashed")
        return ToolOutput(note + reply["output"], "ok" if reply["ok"] else "error")

    def close(self) -> None:
        self._kill()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self._kill()
        except Exception:  # noqa: BLE001
            pass
