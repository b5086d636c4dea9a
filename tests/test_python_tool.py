"""The python tool's containment: timeout, memory, output, writes, network, state, crash recovery."""

from __future__ import annotations

import sys
import time

import pytest

from gptoss_metal.assistant.tools.python_tool import PythonTool, PythonToolLimits


@pytest.fixture
def tool():
    t = PythonTool(PythonToolLimits(timeout_s=3.0, memory_mb=768, cpu_seconds=20, max_output=2000))
    yield t
    t.close()


def test_state_is_kept_between_calls_and_expressions_print(tool):
    assert tool.run("import math\nr = 2").status == "ok"
    out = tool.run("math.pi * r ** 2")
    assert out.status == "ok" and out.text.strip().startswith("12.566")
    assert tool.run("print('a'); print('b')").text == "a\nb\n"


def test_errors_are_reported_without_the_harness_frames(tool):
    out = tool.run("1 / 0")
    assert out.status == "error" and "ZeroDivisionError" in out.text and "sandbox_child" not in out.text


def test_timeout_kills_and_restarts_with_fresh_state(tool):
    tool.run("kept = 1")
    t0 = time.monotonic()
    out = tool.run("while True:\n    pass")
    assert out.status == "timeout" and time.monotonic() - t0 < 10
    after = tool.run("'kept' in globals()")
    assert after.status == "ok" and after.text.strip() == "False"


def test_memory_bomb_is_contained(tool):
    out = tool.run("x = bytearray(4 * 1024**3)")
    assert out.status in ("error", "crashed") and ("MemoryError" in out.text or "stopped" in out.text)
    assert tool.run("2 + 2").text.strip() == "4"


def test_huge_output_is_truncated(tool):
    out = tool.run("print('x' * 10_000_000)")
    assert out.status == "ok"
    assert len(out.text) < 3000
    assert "truncated" in out.text and "more bytes" in out.text


def test_subprocess_output_is_captured_too(tool):
    out = tool.run("import subprocess; subprocess.run(['echo', 'from a child'])")
    assert "from a child" in out.text


@pytest.mark.skipif(not sys.platform.startswith(("linux", "darwin")), reason="containment is Linux/macOS only")
def test_writes_outside_its_folder_are_denied_inside_allowed(tool, tmp_path):
    target = tmp_path / "escape.txt"
    out = tool.run(f"open({str(target)!r}, 'w').write('x')")
    if not ((tool.containment.get("landlock") or {}).get("abi") or tool.containment.get("sandbox_exec")):
        pytest.skip(f"no file-write containment on this kernel: {tool.containment}")
    assert out.status == "error" and "Permission" in out.text
    assert not target.exists()
    assert tool.run("open('inside.txt', 'w').write('ok')").status == "ok"
    assert (tool.work_dir / "inside.txt").read_text() == "ok"
    assert tool.run("import os; os.remove('inside.txt')").status == "ok"


def test_network_is_denied(tool):
    tool.run("0")
    c = tool.containment
    if not ((c.get("namespaces") or {}).get("net") or (c.get("landlock") or {}).get("tcp") or c.get("sandbox_exec")):
        pytest.skip(f"no network containment on this kernel: {c}")
    out = tool.run("import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', 9))")
    # refused would mean it reached a real loopback listener stack; denied/unreachable means contained
    assert out.status == "error" and "refused" not in out.text
    assert "Permission" in out.text or "unreachable" in out.text


def test_crash_restarts_cleanly(tool):
    tool.run("v = 1")
    out = tool.run("import os; os._exit(7)")
    assert out.status == "crashed" and "exit status 7" in out.text
    out = tool.run("'v' in globals()")
    assert out.status == "ok" and out.text.strip() == "False"
    assert tool.restarts == 1
    out = tool.run("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert out.status == "crashed" and "signal" in out.text
    assert tool.run("1").text.strip() == "1"


def test_the_child_interpreter_is_asked_where_it_lives_once():
    from gptoss_metal.assistant.tools import python_tool, sandbox_paths

    python_tool._asked_interpreter_info.cache_clear()
    info = python_tool._interpreter_info(sys.executable)
    assert info is python_tool._interpreter_info(sys.executable)  # one extra Python per executable, not per start
    assert python_tool._asked_interpreter_info.cache_info().misses == 1
    assert info.keys() == sandbox_paths.interpreter_info().keys() and info["prefix"] == sys.prefix
