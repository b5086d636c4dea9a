"""The python tool's containment said in words (for `gptoss doctor`, `/tools` and logs).

`PythonTool.containment` is what the interpreter process reported when it started (a dict; see
sandbox_child.py); `describe` turns it into one line per concern: files, network, processes,
limits -- and says plainly what is NOT contained on this machine.
"""

from __future__ import annotations

from typing import Any


def _files(c: dict[str, Any]) -> str:
    ll = c.get("landlock") or {}
    opted = c.get("read_paths") or []
    extra = f", and reads (no writes) {', '.join(opted)}" if opted else ""
    if ll.get("abi"):
        return (f"files: reads and runs only system and Python folders and its own folder{extra}; writes only "
                f"in its own folder; your home folder and files like /etc/passwd are unreadable "
                f"(Landlock ABI {ll['abi']})")
    if c.get("sandbox_exec"):
        return ("files: cannot read or run anything in your home folder, /Users or /Volumes except its own "
                f"folder and the Python installation{extra}; writes only in its own folder (macOS sandbox-exec; "
                "other system files stay readable)")
    why = ll.get("error") or "no Landlock or sandbox-exec on this system"
    return f"files: NOT contained -- the code can read and write everything your user can ({why})"


def _network(c: dict[str, Any]) -> str:
    ns, ll = c.get("namespaces") or {}, c.get("landlock") or {}
    if ns.get("net"):
        return "network: none (an empty network namespace" + (", and Landlock denies TCP)" if ll.get("tcp") else ")")
    if ll.get("tcp"):
        return "network: TCP denied by Landlock (UDP is not)"
    if c.get("sandbox_exec"):
        return "network: denied by sandbox-exec"
    return "network: NOT contained -- the code can reach the network"


def _processes(c: dict[str, Any]) -> str:
    ns, limits = c.get("namespaces") or {}, c.get("limits") or {}
    if ns.get("pid"):
        life = ("every process it starts lives in its own pid namespace and is killed when the call ends, "
                "on a timeout, a reset, or when the session or its program ends")
    elif c.get("platform", "").startswith("linux"):
        life = ("processes it starts stay in its process tree (child subreaper) and are killed when the call "
                "ends, on a timeout, a reset and at the end of the session")
    else:
        life = ("processes it starts are killed when the call ends, on a timeout, a reset and at the end of the "
                "session (as its descendants and process group; one that starts its own session and whose "
                "parent exits can escape)")
    bounds = []
    if c.get("root"):
        bounds.append("RLIMIT_NPROC does not bind root")
    elif "processes" in limits:
        where = "in its own user namespace" if limits.get("process_count") == "sandbox" else "counting all your processes"
        allowance = limits.get("allowance", limits["processes"])
        bounds.append(f"at most {allowance} processes and threads (RLIMIT_NPROC {where})")
    if c.get("pid_max"):
        bounds.append(f"at most {c['pid_max'] - 1} in its pid namespace (pid_max)")
    if not bounds or bounds == ["RLIMIT_NPROC does not bind root"]:
        bounds.append("NO bound on how many processes it starts")
    return f"processes: {life}; " + "; ".join(bounds)


def _limits(c: dict[str, Any]) -> str:
    lim = c.get("limits") or {}
    parts = []
    if c.get("timeout_s"):
        parts.append(f"{c['timeout_s']:g} s per call")
    if "cpu_seconds" in lim:
        parts.append(f"{lim['cpu_seconds']} CPU s")
    if "address_space_mb" in lim:
        parts.append(f"{lim['address_space_mb']} MB of memory (address space)")
    if "file_mb" in lim:
        parts.append(f"files up to {lim['file_mb']} MB")
    if "open_files" in lim:
        parts.append(f"{lim['open_files']} open files")
    if c.get("max_output"):
        parts.append(f"output cut at {c['max_output']} characters")
    return "limits: " + ", ".join(parts) + " (memory and CPU per process: the total grows with the process count)"


def describe(containment: dict[str, Any]) -> list[str]:
    """One line per concern; empty when the interpreter has not started."""
    if not containment:
        return []
    return [_files(containment), _network(containment), _processes(containment), _limits(containment)]
