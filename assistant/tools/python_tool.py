"""The built-in `python` tool: a stateful interpreter in a separate, contained process.

Model-written code runs on the user's machine, so the interpreter is contained (sandbox_child.py
has the mechanisms, containment.py says in words what applied; README "The python tool" is the
user's version):
- runaway code: a wall-clock timeout per call; CPU-seconds, address-space, file-size and open-file
  limits per process; truncated output; a crash or kill restarts a fresh interpreter;
- files: reads only system and Python folders, its own temporary folder and paths the user opted
  in to (`read_paths`, `--python-tool-read`); writes only in its own folder (Linux: Landlock;
  macOS: a sandbox-exec profile that denies the home folder, /Users and /Volumes);
- network: none (Linux: an empty network namespace, and Landlock's TCP rules; macOS: sandbox-exec);
- processes: a bound on how many it may create, and every process it started dies when the call
  ends, on a timeout, a reset and with the session (Linux: its own pid namespace; elsewhere: found
  and killed as descendants);
- secrets in the environment: the interpreter gets a fresh, minimal environment.
What it does NOT protect against (`containment` says what applied here):
- kernels without Landlock or unprivileged namespaces, where only the resource limits apply;
- CPU and memory use up to the limits, times the number of processes;
- on macOS, reading system files outside the home folder, and a process that starts its own
  session and outlives its parent.
"""

from __future__ import annotations

import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Union

from . import processes, sandbox_paths
from .builtin import BuiltinTool, ToolOutput
from .containment import describe

if TYPE_CHECKING:
    from gptoss_metal.harmony_io import BuiltinToolSpec

HERE = Path(__file__).parent
CHILD = HERE / "sandbox_child.py"
CHILD_FILES = (CHILD, HERE / "sandbox_paths.py", HERE / "sandbox_linux.py", HERE / "processes.py")
KEPT_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
              "NUMEXPR_MAX_THREADS")
START_TIMEOUT_S = 30.0
FOLDER_PREFIX = "gptoss-python-"  # then the owning process's pid: folders of dead owners are removed


def remove_stale_folders() -> list[Path]:
    """Remove tool folders whose program died without cleaning up (killed, or the machine lost power)."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        try:
            pid = int(folder.name[len(FOLDER_PREFIX):].split("-", 1)[0])
            if folder.stat().st_uid != os.getuid() or pid == os.getpid():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        except (ValueError, OSError):
            continue  # not ours, or its owner is alive (or not ours to signal)
    return removed


@dataclass
class PythonToolLimits:
    timeout_s: float = 30.0
    memory_mb: int = 1024  # address space, per process
    cpu_seconds: int = 60  # per process
    file_mb: int = 64
    max_output: int = 16_000  # characters
    max_processes: int = 32  # processes and threads (Linux counts threads) the interpreter may run at once


@functools.lru_cache(maxsize=None)
def _asked_interpreter_info(executable: str) -> dict:
    out = subprocess.run([executable, "-I", str(HERE / "sandbox_paths.py")], capture_output=True, text=True,
                         timeout=30, check=True)
    return json.loads(out.stdout)


def _interpreter_info(executable: str) -> dict:
    """Where the child's interpreter lives, asked from it once (its sys.path under -I differs from ours)."""
    try:
        return _asked_interpreter_info(executable)  # a failure is not cached: the next start asks again
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return sandbox_paths.interpreter_info()


class PythonTool(BuiltinTool):
    """The python tool's runner: one interpreter per conversation; state (variables, imports, files)
    persists between calls. What harmony knows of it (name, declaration) is `harmony_io.PYTHON`.

    `read_paths`: files or folders the code may also read (never write). `namespaces` and `landlock`
    exist to test and diagnose the fallbacks; leave them on.
    """

    @property
    def spec(self) -> BuiltinToolSpec:
        # imported here: this module also runs with the system's python3 and this folder alone (builtin.py)
        from gptoss_metal.harmony_io import PYTHON

        return PYTHON

    def __init__(self, limits: Optional[PythonToolLimits] = None, *, read_paths: Iterable[Union[str, Path]] = (),
                 namespaces: bool = True, landlock: bool = True):
        self.limits = limits or PythonToolLimits()
        self.read_paths = sandbox_paths.checked_read_paths(read_paths)
        self.namespaces, self.landlock = namespaces, landlock
        self._proc: Optional[subprocess.Popen] = None
        self._root: Optional[Path] = None
        self._req = None
        self._resp: Optional[int] = None
        self._resp_buf = b""
        self._init_pidfd: Optional[int] = None
        self.init_pid: Optional[int] = None  # pid 1 of its pid namespace, seen from here (Linux)
        self.containment: dict = {}
        self.restarts = 0

    @property
    def work_dir(self) -> Optional[Path]:
        return None if self._root is None else self._root / "work"

    @property
    def pid(self) -> Optional[int]:
        """The interpreter's process (its supervisor, where it runs in a pid namespace)."""
        return None if self._proc is None else self._proc.pid

    def describe(self) -> list[str]:
        """What contains the interpreter, in words (starts it if needed)."""
        if self._proc is None:
            self._start()
        return describe(self.containment)

    # -- the process ---------------------------------------------------------------------------

    def _env(self, work: Path) -> dict[str, str]:
        """A fresh environment: nothing of ours (API keys, tokens) leaks into the code's reach."""
        env = {k: os.environ[k] for k in KEPT_ENV if k in os.environ}
        env.setdefault("LANG", "C.UTF-8")
        bin_dirs = [os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]
        env.update(HOME=str(work), TMPDIR=str(work), MPLBACKEND="Agg", PATH=os.pathsep.join(bin_dirs),
                   PYTHONDONTWRITEBYTECODE="1")
        env.update({k: str(min(4, os.cpu_count() or 1)) for k in THREAD_ENV})
        return env

    def _start(self) -> None:
        self.containment = {}
        remove_stale_folders()
        self._root = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))
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
            "max_processes": self.limits.max_processes, "timeout_s": self.limits.timeout_s,
            "read_paths": self.read_paths, "home": os.path.expanduser("~"), "namespaces": self.namespaces,
            "landlock": self.landlock, "sandbox_exec": use_sandbox_exec,
        }
        if not sys.platform.startswith("linux"):  # Linux: the child counts, only where it has no user namespace
            cfg["user_tasks"] = processes.user_tasks(os.getuid())
        cmd = [sys.executable, "-I", "-B", str(CHILD), json.dumps(cfg)]
        if use_sandbox_exec:  # pragma: no cover - macOS only
            info = _interpreter_info(sys.executable)
            profile = sandbox_paths.macos_profile(
                work=str(work), io=str(io_dir), home=os.path.expanduser("~"),
                python=sandbox_paths.python_dirs(info), read_paths=self.read_paths,
                child_files=[str(f) for f in CHILD_FILES])
            cmd = ["sandbox-exec", "-p", profile] + cmd
        log = self._root / "interpreter.log"  # the child's own stderr: why it failed to start, if it did
        with open(log, "wb") as log_file:
            self._proc = subprocess.Popen(
                cmd, pass_fds=(req_r, resp_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log_file, cwd=work, env=self._env(work), start_new_session=True,
            )
        os.close(req_r)
        os.close(resp_w)
        self._req = os.fdopen(req_w, "w", encoding="utf-8")
        self._resp, self._resp_buf = resp_r, b""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            hello = self._read_reply(timeout=deadline - time.monotonic())
            if hello is not None and "init_pid" in hello:
                self._watch_init(hello["init_pid"])
                continue
            break
        if hello is None or not hello.get("ready"):
            why = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            self._kill()
            raise RuntimeError("the python tool's interpreter failed to start" + (f": {why[0]}" if why else ""))
        self.containment = dict(hello.get("containment", {}))
        self.containment["timeout_s"] = self.limits.timeout_s

    def _watch_init(self, pid: int) -> None:
        """Hold a pidfd on the sandbox's init: a reference that cannot point at a recycled pid."""
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return
        if processes.parent_of(pid) != self._proc.pid:  # not (or no longer) our supervisor's child
            os.close(fd)
            return
        self._init_pidfd, self.init_pid = fd, pid

    def _read_reply(self, timeout: float) -> Optional[dict]:
        """The next JSON line from the interpreter; None on timeout, {"eof": True} when it is gone.

        Reads the raw fd with its own buffer: a buffered reader could hold a second line that
        poll() would then never report. (poll, not select: a server's fds can exceed FD_SETSIZE.)
        """
        deadline = time.monotonic() + timeout
        fd = self._resp
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._resp_buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if poller.poll(left * 1000):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return {"eof": True}
                self._resp_buf += chunk
        line, self._resp_buf = self._resp_buf.split(b"\n", 1)
        return json.loads(line)

    def _in_pid_namespace(self) -> bool:
        return bool((self.containment.get("namespaces") or {}).get("pid")) or self._init_pidfd is not None

    def _sweep(self) -> None:
        """Kill what the last call left running, where no pid namespace does it from inside."""
        if self._proc is not None and not self._in_pid_namespace():
            processes.kill_descendants(self._proc.pid)

    def _kill(self) -> None:
        """End the interpreter and every process it started; remove its folder."""
        proc = self._proc
        if proc is not None:
            if not self._in_pid_namespace() and proc.poll() is None:
                try:  # stop it so it cannot fork while its descendants are being killed
                    os.kill(proc.pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
                processes.kill_descendants(proc.pid)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if self._init_pidfd is not None:
                try:
                    signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)
                except (ProcessLookupError, OSError):
                    pass
            proc.wait()
            if self._init_pidfd is not None:
                # readable once init has exited, which happens after the kernel killed its namespace
                poller = select.poll()
                poller.register(self._init_pidfd, select.POLLIN)
                poller.poll(10_000)
                os.close(self._init_pidfd)
                self._init_pidfd = self.init_pid = None
        if self._req is not None:
            try:
                self._req.close()
            except OSError:
                pass
        if self._resp is not None:
            os.close(self._resp)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
        self._proc = self._req = self._resp = None
        self._root = None

    # -- calls ---------------------------------------------------------------------------------

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
                              "and every process it started were stopped, and its state is lost.", "timeout")
        if reply.get("eof"):
            code_ = self._proc.wait() if self._proc else None
            self._kill()
            self.restarts += 1
            why = f"signal {-code_}" if code_ is not None and code_ < 0 else f"exit status {code_}"
            return ToolOutput(note + f"The interpreter stopped ({why}; limits: {self.limits.memory_mb} MB, "
                              f"{self.limits.cpu_seconds} CPU s). A fresh one will run the next call; "
                              "earlier state is lost.", "crashed")
        self._sweep()
        return ToolOutput(note + reply["output"], "ok" if reply["ok"] else "error")

    def reset(self) -> None:
        """Forget all state: the interpreter and every process it started end; the next call starts fresh."""
        self._kill()

    def close(self) -> None:
        self._kill()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self._kill()
        except Exception:  # noqa: BLE001
            pass
