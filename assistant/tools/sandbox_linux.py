"""Linux containment primitives, used inside the python tool's child process (stdlib only).

- `enter_namespaces`: a new user namespace (unprivileged where the kernel allows it) and with it an
  empty network namespace, a pid namespace (every process the code starts lives and dies inside
  it) and a mount namespace (for a private /proc showing only those processes);
- `mount_private_proc`, `limit_pids`: that /proc, and the pid namespace's own pid_max (kernel
  >= 6.14; a process bound that also holds for root, whom RLIMIT_NPROC does not bind);
- `apply_landlock`: an allow-list for reads, execution and writes (Landlock ABI >= 1), TCP bind and
  connect denied (ABI >= 4), signals and abstract UNIX sockets scoped to the sandbox (ABI >= 6).
Each returns what it achieved; nothing here raises for a kernel that lacks a feature.
"""

from __future__ import annotations

import ctypes
import os
import stat
from typing import Iterable

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446  # all archs
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1

FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_V1 = (1 << 13) - 1  # execute .. make_sym
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
PID_MAX_MIN = 301  # the kernel refuses anything lower (RESERVED_PIDS + 1)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _errno() -> str:
    return os.strerror(ctypes.get_errno())


def prctl(option: int, value: int) -> bool:
    return _libc().prctl(option, ctypes.c_ulong(value), 0, 0, 0) == 0


def _write(path: str, text: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(text)
        return True
    except OSError:
        return False


def enter_namespaces() -> dict:
    """unshare() into new user+network+pid+mount namespaces, else user+network, else none.

    The user namespace maps our own uid/gid onto themselves, so files keep their owners. The pid
    namespace applies to the children created after this call: the next fork is its init.
    """
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    tries = ((CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWNS, ("user", "net", "pid", "mount")),
             (CLONE_NEWUSER | CLONE_NEWNET, ("user", "net")))
    error = ""
    for flags, names in tries:
        if libc.unshare(ctypes.c_int(flags)) == 0:
            _write("/proc/self/setgroups", "deny")
            maps = _write("/proc/self/uid_map", f"{uid} {uid} 1") and _write("/proc/self/gid_map", f"{gid} {gid} 1")
            return {**{n: True for n in names}, "id_maps": maps}
        error = error or _errno()
    return {"error": error}


def mount_private_proc() -> bool:
    """In a new mount + pid namespace: a /proc that shows only the sandbox's own processes."""
    libc = _libc()
    if libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) != 0:
        return False
    return libc.mount(b"proc", b"/proc", b"proc", ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC), None) == 0


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = os.uname().release.split(".")
        return (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)) >= (major, minor)
    except (ValueError, IndexError):
        return False


def limit_pids(n: int) -> int:
    """Set this pid namespace's pid_max (kernel >= 6.14 keeps one per namespace); 0 if not possible.

    Only ever called with a private /proc, inside a user namespace: the write cannot reach the
    machine's own setting (that needs privileges the namespace does not have).
    """
    if not _kernel_at_least(6, 14):
        return 0
    value = max(n, PID_MAX_MIN)
    if not _write("/proc/sys/kernel/pid_max", str(value)):
        return 0
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return value


def landlock_abi() -> int:
    if not hasattr(os, "O_PATH"):
        return 0
    abi = _libc().syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                          ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return max(int(abi), 0)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def apply_landlock(*, read_exec: Iterable[str], read_only: Iterable[str], full: Iterable[str],
                   read_write_files: Iterable[str]) -> dict:
    """Restrict this process and its future children to the given paths.

    read_exec: read files, list folders, run programs (system and Python folders);
    read_only: read and list (paths the user opted in to);
    full: everything (the tool's own folders);
    read_write_files: read and write, no creation (/dev/null).
    A path that cannot be added (vanished, unsupported file type) is reported under "skipped", and
    stays inaccessible: the restriction only ever fails closed.
    """
    abi = landlock_abi()
    if abi < 1:
        return {"abi": 0, "error": "Landlock is not available in this kernel"}
    libc = _libc()
    handled = FS_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    file_rights = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (FS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(handled, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return {"abi": 0, "error": f"landlock_create_ruleset: {_errno()}"}
    rules = ([(p, FS_EXECUTE | FS_READ_FILE | FS_READ_DIR) for p in read_exec]
             + [(p, FS_READ_FILE | FS_READ_DIR) for p in read_only]
             + [(p, handled) for p in full]
             + [(p, FS_READ_FILE | FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)) for p in read_write_files])
    skipped: list[str] = []
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                skipped.append(path)
                continue
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    rights &= file_rights
                rule = _PathBeneathAttr(rights & handled, fd)
                if libc.syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                                ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                    skipped.append(path)
            finally:
                os.close(fd)
        if not prctl(PR_SET_NO_NEW_PRIVS, 1):
            return {"abi": 0, "error": f"no_new_privs: {_errno()}"}
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return {"abi": 0, "error": f"landlock_restrict_self: {_errno()}"}
    finally:
        os.close(ruleset)
    return {"abi": abi, "reads": True, "writes": True, "tcp": abi >= 4, "scoped": abi >= 6, "skipped": skipped}
