"""`gptoss chat` under a pseudo-terminal: start, ask, /effort, Ctrl-C mid-answer, /save, /quit."""

from __future__ import annotations

import json
import os
import sys

import pytest

pexpect = pytest.importorskip("pexpect")


def spawn(args, tmp_path):
    env = dict(os.environ, GPTOSS_CACHE_DIR=str(tmp_path / "cache"), COLUMNS="120", TERM="xterm")
    return pexpect.spawn(sys.executable, ["-m", "gptoss_metal.cli.main", "chat", *args], env=env, encoding="utf-8",
                         timeout=60, dimensions=(40, 120))


def test_terminal_chat_session(tiny_runtime, tmp_path):
    child = spawn([str(tiny_runtime), "--max-tokens", "100000", "--seed", "3"], tmp_path)
    try:
        child.expect("gptoss chat")
        child.expect(">>> ")
        child.sendline("Tell me everything")
        child.expect("working")  # the turn has begun (100000 tokens would take many minutes)
        child.sendintr()
        child.expect(r"\[interrupted\]")
        child.expect(r"prefill \d+ tok .* reused 0 tok from cache")
        child.expect(">>> ")
        child.sendline("/effort low")
        child.expect(r"reasoning effort: \S*low")
        child.expect(">>> ")
        child.sendline("/stats")
        child.expect(r"session: 1 turns")
        child.expect(">>> ")
        save = tmp_path / "conv.json"
        child.sendline(f"/save {save}")
        child.expect("saved 2 messages")
        child.expect(">>> ")
        child.sendline("/nonsense")
        child.expect("unknown command")
        child.expect(">>> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    data = json.loads(save.read_text())
    assert data["effort"] == "low"
    assert data["messages"][0] == {"role": "user", "content": "Tell me everything"}
    assert data["messages"][1]["interrupted"] is True
    assert (tmp_path / "cache" / "chat_history").read_text().count("Tell me everything") == 1


def test_ctrl_d_exits_and_multiline_input(tiny_runtime, tmp_path):
    child = spawn([str(tiny_runtime), "--max-tokens", "4"], tmp_path)
    try:
        child.expect(">>> ")
        child.sendline("first line \\")
        child.expect(r"\.\.\. ")
        child.sendline("second line")
        child.expect(r"decode 4 tok")
        child.expect(">>> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
