"""The python tool's interpreter process. Stdlib only; run as `python -I sandbox_child.py`.

At start it contains itself, before any model-written code runs:
- resource limits: address space, CPU seconds, file size, open files (and processes where the
  kernel enforces it for this user);
- Linux: a new user + network namespace when unprivileged namespaces are allowed (no network
  interfaces at all), and Landlock (kernel >= 5.13): file writes only inside its working and
  capture folders, TCP bind/connect denied (ABI >= 4), signals to outside processes denied
  (ABI >= 6);
- macOS: the parent starts it under `sandbox-exec` with a profile denying network and writes
  outside those folders.
Then it serves a Jupyter-like stateful loop: one JSON request per line on fd `REQ`, one JSON
reply per line on fd `RESP`; stdout/stderr of the code (fd 1 and 2, so subprocess output too)
go to a capture file that the reply carries back, truncated.
"""

import ast
import ctypes
import io
import json
import os
import resource
import signal
import sys
import traceback

# -- containment ----------------------------------------------------------------------------------

LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 1, 1 << 2, 1 << 3
FS_WRITE_RIGHTS_V1 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12)
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1 << 0, 1 << 1


def set_limits(memory_mb, cpu_seconds, file_mb):
    limits = [
        (resource.RLIMIT_AS, memory_mb * 2**20),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_FSIZE, file_mb * 2**20),
        (resource.RLIMIT_NOFILE, 256),
    ]
    if hasattr(resource, "RLIMIT_NPROC"):
        limits.append((resource.RLIMIT_NPROC, 64))
    applied = []
    for which, value in limits:
        try:
            soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, hard if hard != resource.RLIM_INFINITY else value))
            applied.append(which)
        except (ValueError, OSError):
            pass
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big write fails with EFBIG instead of killing us
    return len(applied)


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def unshare_network():
    """A private (empty) network namespace, via an unprivileged user namespace."""
    if not sys.platform.startswith("linux"):
        return False
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        return False
    try:  # keep our identity inside the namespace so file ownership looks the same
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    except OSError:
        pass
    return True


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock(write_dirs, write_files):
    """Allow writes only beneath `write_dirs` (and to `write_files`); deny TCP. Returns the ABI used."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return 0
    fs = FS_WRITE_RIGHTS_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(fs, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return 0
    try:
        for path, rights in [(d, fs) for d in write_dirs] + [(f, FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)) for f in write_files]:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneathAttr(rights, fd)
                if libc.syscall(LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                    return 0
            finally:
                os.close(fd)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return 0
        if libc.syscall(LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return 0
        return abi
    finally:
        os.close(ruleset)


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


def main():
    cfg = json.loads(sys.argv[1])
    req = os.fdopen(cfg["req_fd"], "r", encoding="utf-8")
    resp = os.fdopen(cfg["resp_fd"], "w", encoding="utf-8")
    capture_path = os.path.join(cfg["io_dir"], "output.txt")
    os.chdir(cfg["work_dir"])
    os.environ.update({"HOME": cfg["work_dir"], "TMPDIR": cfg["work_dir"], "MPLBACKEND": "Agg"})
    status = {
        "limits": set_limits(cfg["memory_mb"], cfg["cpu_seconds"], cfg["file_mb"]),
        "netns": unshare_network() if cfg.get("netns", True) else False,
        "landlock": landlock([cfg["work_dir"], cfg["io_dir"]], ["/dev/null"]) if cfg.get("landlock", True) else 0,
        "sandbox_exec": bool(cfg.get("sandbox_exec")),
    }
    resp.write(json.dumps({"ready": True, "containment": status}) + "\n")
    resp.flush()
    namespace = {"__name__": "__main__"}
    for line in req:
        request = json.loads(line)
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
            try:
                out.close()
            except Exception:  # noqa: BLE001 - e.g. EFBIG on flush after hitting the file-size limit
                pass
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
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


if __name__ == "__main__":
    main()
