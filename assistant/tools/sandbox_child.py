"""The python tool's interpreter process. Stdlib only; run as `python -I -B sandbox_child.py CONFIG`.

It contains itself before any model-written code runs (the parent, python_tool.py, has already
given it a clean environment, its own session and, on macOS, a `sandbox-exec` profile):

- resource limits that the code cannot raise again (soft = hard): address space, CPU seconds,
  file size, open files, no core files, and processes (RLIMIT_NPROC: counted inside its own user
  namespace where it has one, otherwise against the user's current count plus the allowance);
- Linux, where the kernel lets an unprivileged user create namespaces: a user namespace with an
  empty network namespace, a pid namespace and a mount namespace. The process tree is then

      supervisor (outside, this process)  -> init (pid 1 inside: reaper)  -> interpreter (pid 2)

  Every process the code starts lives in that pid namespace and dies when its init dies: on a
  timeout, reset or close the parent kills the group, and the supervisor kills init as soon as the
  parent's request pipe closes (the parent exited, even by SIGKILL). The init mounts a private
  /proc and sets the namespace's pid_max (kernel >= 6.14), then applies Landlock;
- Linux without namespaces: the interpreter is a child subreaper (orphans stay in its tree, so the
  parent can find and kill them) and applies Landlock itself; /proc is then not readable;
- Landlock (kernel >= 5.13): reads and execution only in system and Python folders, the tool's own
  folder and opt-in paths; writes only in its own folders; TCP denied (ABI >= 4); signals and
  abstract UNIX sockets scoped to the sandbox (ABI >= 6).

Then it serves a Jupyter-like stateful loop: one JSON request per line on fd `req_fd`, one JSON reply
per line on fd `resp_fd`; stdout/stderr of the code (fd 1 and 2, so subprocess output too) go to a
capture file the reply carries back, truncated. Processes the code leaves running when a call ends
are killed (here in the pid namespace; by the parent otherwise).
"""

import ast
import io
import json
import os
import resource
import select
import shutil
import signal
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sandbox_paths  # noqa: E402

if sys.platform.startswith("linux"):
    import processes  # noqa: E402
    import sandbox_linux  # noqa: E402
else:  # pragma: no cover - macOS
    processes = sandbox_linux = None
del sys.path[0]

LINUX = sandbox_linux is not None
OUTER_PIDNS = [""]  # the pid namespace the child started in (Linux), recorded before leaving it


# -- containment ----------------------------------------------------------------------------------


def set_limits(cfg, per_sandbox_count):
    """Hard limits (soft = hard: the code cannot raise them back). Returns what was set."""
    if per_sandbox_count:
        nproc = cfg["max_processes"]
    else:
        nproc = user_tasks(cfg) + cfg["max_processes"]
    wanted = [
        ("address_space_mb", resource.RLIMIT_AS, cfg["memory_mb"] * 2**20, 2**20),
        ("cpu_seconds", resource.RLIMIT_CPU, cfg["cpu_seconds"], 1),
        ("file_mb", resource.RLIMIT_FSIZE, cfg["file_mb"] * 2**20, 2**20),
        ("open_files", resource.RLIMIT_NOFILE, 256, 1),
        ("core_files", resource.RLIMIT_CORE, 0, 1),
        ("processes", resource.RLIMIT_NPROC, nproc, 1),
    ]
    applied = {}
    for key, which, value, unit in wanted:
        try:
            _, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
            applied[key] = value // unit
        except (ValueError, OSError):
            pass
    applied["process_count"] = "sandbox" if per_sandbox_count else "user"
    applied["allowance"] = cfg["max_processes"]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big write fails with EFBIG instead of killing us
    return applied


def user_tasks(cfg):
    """The user's tasks, this process left out (it did not exist yet where the parent counts them):
    counted here on Linux, only where no user namespace counts per sandbox; elsewhere by the parent."""
    if processes is None or "user_tasks" in cfg:
        return cfg.get("user_tasks", 0)
    return processes.user_tasks(os.getuid(), exclude_pid=os.getpid())


def landlock(cfg, private_proc):
    info = sandbox_paths.interpreter_info()
    read_exec = sandbox_paths.linux_read_exec_paths(private_proc) + sandbox_paths.python_dirs(info, cfg["home"])
    return sandbox_linux.apply_landlock(read_exec=read_exec, read_only=cfg["read_paths"],
                                        full=[cfg["work_dir"], cfg["io_dir"]], read_write_files=["/dev/null"])


def supervise(init_pid, lifeline_fd, resp_fd, root):
    """The supervisor: tell the parent who init is, then wait for it; if the parent goes away, kill
    init (and with it the namespace) and remove the tool's folder, which the parent no longer can."""
    os.write(resp_fd, (json.dumps({"init_pid": init_pid}) + "\n").encode())
    os.close(resp_fd)
    poller = select.poll()
    poller.register(lifeline_fd, 0)  # no events asked: only POLLHUP/POLLERR, when the parent's end closes
    try:
        pidfd = os.pidfd_open(init_pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):
        pidfd = None
    while True:
        ready = poller.poll(None if pidfd is not None else 200)
        if any(fd == lifeline_fd for fd, _ in ready):  # the parent is gone or closed the tool: end it all
            os.kill(init_pid, signal.SIGKILL)
            os.waitpid(init_pid, 0)
            shutil.rmtree(root, ignore_errors=True)
            os._exit(0)
        pid, status = os.waitpid(init_pid, os.WNOHANG)
        if pid:
            break
    code = os.waitstatus_to_exitcode(status)
    if code > 128:  # init reports a signal death of the interpreter as 128 + signal: die the same way
        try:
            signal.signal(code - 128, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL and SIGSTOP keep their default anyway
        try:
            os.kill(os.getpid(), code - 128)
        except (OSError, ValueError):
            pass
    os._exit(code)


def init_process(cfg, status, supervisor_alive_fd):
    """pid 1 of the sandbox's pid namespace: private /proc, pid_max, Landlock, then reap until the
    interpreter exits. Its exit takes every other process of the namespace with it."""
    sandbox_linux.prctl(sandbox_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    poller = select.poll()
    poller.register(supervisor_alive_fd, 0)
    if poller.poll(0):  # the supervisor died before the line above (its parent pid is not visible from here)
        os._exit(1)
    os.close(supervisor_alive_fd)
    status["private_proc"] = sandbox_linux.mount_private_proc()
    status["pid_max"] = sandbox_linux.limit_pids(cfg["max_processes"]) if status["private_proc"] else 0
    if cfg.get("landlock", True):
        status["landlock"] = landlock(cfg, status["private_proc"])
    interpreter = os.fork()
    if interpreter == 0:
        serve(cfg, status, sweep_namespace_after_calls=True)
        os._exit(0)
    for fd in (cfg["req_fd"], cfg["resp_fd"]):
        os.close(fd)
    while True:
        try:
            pid, wstatus = os.wait()
        except ChildProcessError:
            os._exit(1)
        if pid == interpreter:
            code = os.waitstatus_to_exitcode(wstatus)
            os._exit(code if code >= 0 else 128 - code)


def sweep_namespace():
    """Kill every process of the pid namespace except init and this interpreter, then reap ours.

    kill(-1) reaches exactly that set, but only inside a pid namespace: `sweep_namespace` is only
    ever called by the interpreter that init_process forked (pid 2 of a fresh namespace).
    """
    killed = False
    if os.getpid() == 2 and os.readlink("/proc/self/ns/pid") != OUTER_PIDNS[0]:
        try:
            os.kill(-1, signal.SIGKILL)
            killed = True
        except ProcessLookupError:
            pass
    reap(wait_s=1.0 if killed else 0.0)
    return killed


def reap(wait_s=0.0):
    """Collect exited children (killed leftovers, orphans handed to a subreaper): zombies count as
    processes. With `wait_s`, wait that long for children that are still dying."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.002)


def watch_lifeline(fd, folders):
    """Without a pid namespace: if the parent's request pipe closes while code runs, empty the tool's
    folders (Landlock lets it remove their contents, not the folders) and end the process group."""
    def watch():
        poller = select.poll()
        poller.register(fd, 0)
        poller.poll()
        for folder in folders:
            for name in os.listdir(folder):
                path = os.path.join(folder, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else _unlink(path)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


# -- the interpreter loop -------------------------------------------------------------------------


def truncate(text, limit):
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head]}\n... [{len(text) - limit} characters truncated] ...\n{text[-tail:]}"


def execute(code, namespace):
    """Run code like a notebook cell: the value of a final expression is printed."""
    tree = ast.parse(code, mode="exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<python>", "exec"), namespace)
    if last is not None:
        value = eval(compile(last, "<python>", "eval"), namespace)
        if value is not None:
            print(repr(value))


def serve(cfg, status, sweep_namespace_after_calls):
    owner = os.getpid()
    req = os.fdopen(cfg["req_fd"], "r", encoding="utf-8")
    resp = os.fdopen(cfg["resp_fd"], "w", encoding="utf-8")
    for f in (req, resp):
        os.set_inheritable(f.fileno(), False)  # programs the code runs do not get the pipes
    capture_path = os.path.join(cfg["io_dir"], "output.txt")
    resp.write(json.dumps({"ready": True, "containment": status}) + "\n")
    resp.flush()
    namespace = {"__name__": "__main__"}
    for line in req:
        request = json.loads(line)
        reap()
        capture = os.open(capture_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        saved = os.dup(1), os.dup(2)
        os.dup2(capture, 1)
        os.dup2(capture, 2)
        out = io.TextIOWrapper(os.fdopen(os.dup(1), "wb"), encoding="utf-8", errors="replace", line_buffering=True)
        sys.stdout = sys.stderr = out
        ok = True
        try:
            execute(request["code"], namespace)
        except MemoryError:
            ok = False
            print("MemoryError: the python tool's memory limit was reached", flush=True)
        except BaseException as e:  # noqa: BLE001 - report everything the code raises, SystemExit included
            ok = False
            tb = e.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
                tb = tb.tb_next  # hide this harness's own frames
            print("".join(traceback.format_exception(type(e), e, tb)), end="", flush=True)
        finally:
            if os.getpid() != owner:  # a copy the code forked fell back into this loop: it must not answer
                try:
                    out.flush()
                finally:
                    os._exit(0 if ok else 1)
            try:
                out.close()
            except Exception:  # noqa: BLE001 - e.g. EFBIG on flush after hitting the file-size limit
                pass
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        if sweep_namespace_after_calls:
            sweep_namespace()
        os.lseek(capture, 0, os.SEEK_SET)
        raw = b""
        while len(raw) < cfg["max_output"] * 4 + 4:
            chunk = os.read(capture, 1 << 16)
            if not chunk:
                break
            raw += chunk
        total = os.fstat(capture).st_size
        os.close(capture)
        text = raw.decode("utf-8", "replace")
        if total > len(raw):
            text += f"\n... [{total - len(raw)} more bytes of output] ..."
        resp.write(json.dumps({"ok": ok, "output": truncate(text, cfg["max_output"])}) + "\n")
        resp.flush()


def main():
    cfg = json.loads(sys.argv[1])
    os.chdir(cfg["work_dir"])
    status = {"platform": sys.platform, "root": os.geteuid() == 0, "sandbox_exec": bool(cfg.get("sandbox_exec")),
              "namespaces": {}, "landlock": {"abi": 0}, "private_proc": False, "pid_max": 0,
              "read_paths": cfg["read_paths"], "timeout_s": cfg["timeout_s"], "max_output": cfg["max_output"]}
    if LINUX:
        OUTER_PIDNS[0] = os.readlink("/proc/self/ns/pid")
    if LINUX and cfg.get("namespaces", True):
        status["namespaces"] = sandbox_linux.enter_namespaces()
    ns = status["namespaces"]
    status["limits"] = set_limits(cfg, per_sandbox_count=bool(ns.get("user")))
    status["sweep"] = "pid namespace" if ns.get("pid") else "process tree" if LINUX else "process group"
    if ns.get("pid"):
        alive_r, alive_w = os.pipe()  # the supervisor holds the write end for as long as it lives
        init_pid = os.fork()
        if init_pid == 0:
            os.close(alive_w)
            init_process(cfg, status, alive_r)
        os.close(alive_r)
        supervise(init_pid, cfg["req_fd"], cfg["resp_fd"], os.path.dirname(cfg["work_dir"]))
    if LINUX:
        status["subreaper"] = sandbox_linux.prctl(sandbox_linux.PR_SET_CHILD_SUBREAPER, 1)
        if cfg.get("landlock", True):
            status["landlock"] = landlock(cfg, private_proc=False)
        watch_lifeline(cfg["req_fd"], [cfg["work_dir"], cfg["io_dir"]])
    serve(cfg, status, sweep_namespace_after_calls=False)


if __name__ == "__main__":
    main()
