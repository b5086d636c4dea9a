"""`--distributed HOSTFILE`: run this same command on every Mac of an mlx.launch host file.

The same as typing `mlx.launch --hostfile HOSTFILE -- gptoss CMD ...`, with one difference: Ctrl-C.
mlx.launch shares the terminal's process group with the ranks, so Ctrl-C also hits the launcher,
which prints a KeyboardInterrupt traceback over the ranks' message (and orphans them when killed).
Here the launcher runs in its own session, and Ctrl-C is forwarded as SIGINT to the processes it
started: the local ranks stop with one message ("interrupted"), ssh sessions to remote ranks end
(their ranks lose the connection and stop), and the launcher then exits by itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import NoReturn, Optional

import click

from gptoss_metal.metal_runtime.distributed import launched_backend

STOP_WAIT_S = 10.0


def distributed_option(fn):
    return click.option(
        "--distributed", "hostfile", type=click.Path(exists=True, dir_okay=False), default=None,
        help="Spread the model over the Macs listed in this mlx.launch host file (expert-parallel; "
             "same as `mlx.launch --hostfile HOSTFILE -- gptoss ...`; see the README).")(fn)


def _without_option(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--distributed":
            skip = True
        elif not a.startswith("--distributed="):
            out.append(a)
    return out


def _launcher() -> str:
    found = shutil.which("mlx.launch") or str(Path(sys.executable).with_name("mlx.launch"))
    if not Path(found).exists():
        raise click.UsageError("mlx.launch is not installed next to this Python (pip install mlx)")
    return found


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def relaunch(hostfile: Optional[str]) -> None:
    """With a host file and not yet a rank: run this command under mlx.launch and exit with it."""
    if hostfile is None or launched_backend() is not None:
        return  # no option, or already one of the ranks it started
    _run([_launcher(), "--hostfile", hostfile, "--", sys.executable, "-m", "gptoss_metal.cli.main",
          *_without_option(sys.argv[1:])])


def _run(cmd: list[str]) -> NoReturn:
    proc = subprocess.Popen(cmd, start_new_session=True)
    interrupted = False

    def forward(*_) -> None:
        nonlocal interrupted
        interrupted = True
        for pid in _children(proc.pid):
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGINT, forward)
    try:
        code = proc.wait()
        if interrupted:
            try:
                proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(130 if interrupted else code)
