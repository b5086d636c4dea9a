"""What the python tool's interpreter may read, and the macOS sandbox profile that says so.

Stdlib only and import-free on purpose: the parent imports it as part of the package, the
sandboxed child (run as `python -I sandbox_child.py`) imports it by file path.

Reads are an allow-list: the system folders a Python process and the programs it may start need
(Linux: /usr and friends, a few named files of /etc, harmless devices), the Python installation
itself (its prefixes and the folders on its sys.path, wherever they are, even inside the home
folder), the tool's own folder, and what the user explicitly opts in to (`--python-tool-read`).
Everything else -- the home folder, other users' folders, /etc/passwd and friends, mounted
volumes -- is not readable.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Optional

# Linux: folders with programs and libraries (read + execute).
LINUX_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Linux: what of /etc programs commonly read -- not passwd, group, shadow, hosts or anything personal.
LINUX_ETC = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/timezone",
    "/etc/mime.types", "/etc/fonts", "/etc/ssl", "/etc/ca-certificates", "/etc/alternatives",
    "/etc/os-release", "/etc/locale.alias", "/etc/matplotlibrc",
)
LINUX_DEVICES = ("/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
LINUX_CPU_INFO = ("/sys/devices/system/cpu",)  # thread-pool sizing in numpy/OpenBLAS


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def interpreter_info() -> dict:
    """Where this interpreter lives (what `python_dirs` needs); JSON-able, so a parent can ask a child."""
    return {"prefix": sys.prefix, "exec_prefix": sys.exec_prefix, "base_prefix": sys.base_prefix,
            "base_exec_prefix": sys.base_exec_prefix, "executable": sys.executable, "path": list(sys.path)}


def python_dirs(info: dict, home: Optional[str] = None) -> list[str]:
    """The Python installation: its prefixes and sys.path folders (existing, absolute, real paths).

    A folder that would expose the whole home folder (the home folder itself, or one above it, such
    as a sys.path entry of "/") is left out: a Python installation never needs that much.
    """
    home = _real(home or os.path.expanduser("~"))
    candidates = [info["prefix"], info["exec_prefix"], info["base_prefix"], info["base_exec_prefix"],
                  os.path.dirname(os.path.dirname(_real(info["executable"])))]
    candidates += [p for p in info["path"] if p and os.path.isabs(p)]
    out: list[str] = []
    for p in candidates:
        real = _real(p)
        if not os.path.exists(real) or _inside(home, real):
            continue
        if real not in out:
            out.append(real)
    return _outermost(out)


def _outermost(paths: Iterable[str]) -> list[str]:
    """Drop paths inside another path of the list (the rule for the outer one covers them)."""
    ordered = sorted(set(paths), key=len)
    kept: list[str] = []
    for p in ordered:
        if not any(_inside(p, k) for k in kept):
            kept.append(p)
    return kept


def linux_read_exec_paths(private_proc: bool) -> list[str]:
    """System paths to read and execute on Linux. /proc only when the sandbox has its own (its own
    pid namespace): the machine's /proc shows every process's command line."""
    paths = [p for p in LINUX_SYSTEM_DIRS + LINUX_ETC + LINUX_DEVICES + LINUX_CPU_INFO if os.path.exists(p)]
    if private_proc:
        paths.append("/proc")
    return paths


def checked_read_paths(paths: Iterable[str]) -> list[str]:
    """The user's opt-in read paths as real paths; a missing one is an error, not a silent no-op."""
    out = []
    for p in paths:
        real = _real(str(p))
        if not os.path.exists(real):
            raise ValueError(f"python tool read path {p}: no such file or folder")
        out.append(real)
    return out


# -- macOS ------------------------------------------------------------------------------------

def sbpl_string(s: str) -> str:
    """A string literal of Apple's sandbox profile language (TinyScheme syntax)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in s):
        raise ValueError(f"path {s!r} holds control characters; the python tool cannot name it in a sandbox profile")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _filters(kind: str, paths: Iterable[str]) -> str:
    return " ".join(f"({kind} {sbpl_string(p)})" for p in paths)


def macos_profile(*, work: str, io: str, home: str, python: Iterable[str], read_paths: Iterable[str] = (),
                  child_files: Iterable[str] = ()) -> str:
    """The `sandbox-exec` profile of the python tool (later rules win over earlier ones).

    - no network, no writes except its folders (and /dev/null);
    - no reading (contents, folder listings, extended attributes) and no running programs in the
      home folder, every user's folder (/Users) and mounted volumes (/Volumes) -- except its own
      folders, the Python installation, the tool's own scripts and the paths opted in to.
    File metadata (stat) stays allowed: Python resolves its own paths with it at start-up.
    """
    home = _real(home)
    private = _outermost(["/Users", "/Volumes", home])
    allowed_exec = _outermost([_real(work), *(_real(p) for p in python)])
    allowed_read = allowed_exec + [_real(io), *(_real(p) for p in read_paths)]
    lines = [
        "(version 1)",
        "(allow default)",
        "(deny network*)",
        "(deny file-write*)",
        f"(allow file-write* {_filters('subpath', [_real(work), _real(io)])} (literal \"/dev/null\") "
        "(literal \"/dev/dtracehelper\"))",
        f"(deny file-read-data file-read-xattr process-exec* {_filters('subpath', private)})",
        f"(allow file-read-data file-read-xattr {_filters('subpath', allowed_read)}"
        + (f" {_filters('literal', [_real(f) for f in child_files])}" if child_files else "") + ")",
        f"(allow process-exec* {_filters('subpath', allowed_exec)})",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # `python -I sandbox_paths.py`: how the parent asks the child's interpreter
    import json

    print(json.dumps(interpreter_info()))
