"""The rank watchdog: every way a rank's work can end becomes one line and one exit code, never a hang.

Each case runs in its own process (the guard ends processes with os._exit); no launcher needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

PRELUDE = """
import os, sys, time
from gptoss_metal.metal_runtime.rank_watchdog import RankWatchdog
guard = RankWatchdog({rank}, 2, timeout={timeout}).install()
"""


def run(body: str, rank: int = 0, timeout: float = 1.0, wait: float = 30, sigint_after: float | None = None):
    code = textwrap.dedent(PRELUDE.format(rank=rank, timeout=timeout)) + textwrap.dedent(body)
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if sigint_after is not None:
        time.sleep(sigint_after)
        p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=wait)
    return p.returncode, out, err, time.monotonic() - t0


def test_a_return_exits_with_its_code_and_says_nothing():
    code, out, err, _ = run("guard.run(lambda: print('done') or 3)")
    assert (code, out, err) == (3, "done\n", "")


def test_an_exception_is_one_line_naming_the_rank():
    code, _, err, _ = run("def main():\n    raise ValueError('bad shard')\nguard.run(main)", rank=1)
    assert code == 1
    assert err == "gptoss: [rank 1/2] error: ValueError: bad shard\n"


def test_a_lost_peer_reads_as_such():
    code, _, err, _ = run("def main():\n    raise RuntimeError('[ring] connection to a peer was lost')\n"
                          "guard.run(main)")
    assert code == 1 and "another rank stopped (connection lost)" in err and err.count("\n") == 1


def test_a_wait_past_its_deadline_ends_the_rank():
    """The other ranks never answer: the watchdog ends this one (1 s deadline here), whatever main does."""
    code, _, err, took = run("def main():\n    with guard.deadline('waiting for rank 0'):\n        time.sleep(60)\n"
                             "guard.run(main)")
    assert code == 1 and took < 10
    assert "no answer from the other ranks" in err and "waiting for rank 0" in err


def test_a_rank_stuck_holding_the_gil_is_ended_by_the_backstop():
    """The watchdog cannot run (a C call holds the GIL): faulthandler's backstop dumps and ends the rank."""
    code, _, err, took = run("import ctypes\ndef main():\n    with guard.deadline('waiting for rank 0'):\n"
                             "        ctypes.PyDLL(None).sleep(60)\nguard.run(main)")
    assert code == 1 and took < 20
    assert "Timeout" in err and "no answer from the other ranks" not in err


def test_many_short_deadlines_and_a_left_one_never_trip_the_backstop():
    """Deadlines entered per token move the backstop along; after the last one is left it is cancelled."""
    code, out, err, took = run("def main():\n    t0 = time.monotonic()\n    while time.monotonic() - t0 < 7:\n"
                               "        with guard.deadline('a token'):\n            time.sleep(0.001)\n"
                               "    time.sleep(7)\n    return 3\nguard.run(main)")
    assert (code, out, err) == (3, "", "") and took < 25


def test_ctrl_c_while_blocked_ends_the_rank_quietly_unless_it_is_rank_0():
    body = "def main():\n    time.sleep(60)\nguard.run(main)"
    code, _, err, took = run(body, rank=0, sigint_after=1.5)
    assert code == 130 and err == "\ngptoss: [rank 0/2] interrupted\n" and took < 10  # a line of its own
    code, _, err, _ = run(body, rank=1, sigint_after=1.5)
    assert code == 130 and err == ""


def test_a_rank_whose_launcher_is_gone_stops():
    """mlx.launch killed: its ranks are orphaned (reparented) and must not run on alone."""
    code = textwrap.dedent(PRELUDE.format(rank=1, timeout=30)) + "guard.run(lambda: time.sleep(60))"
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
                               + repr(code) + "]); print(p.pid, flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(1.0)
    parent.kill()
    parent.wait()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the orphaned rank kept running")
