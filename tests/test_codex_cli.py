"""OpenAI's Codex CLI, unmodified, drives a tool round trip against `gptoss serve`.

Codex is configured as it documents for a local model provider (`wire_api = "responses"`, base_url on
127.0.0.1). Its first request carries what it always sends (`client_metadata`, `prompt_cache_key`,
`include`, `store: false`, a `namespace` tool, the hosted `web_search` tool); the model (a real checkpoint
built by `scripted_checkpoint`: converter, loader, MLX model) reasons and calls `exec_command`; Codex runs
the command in its sandbox, sends the output back as `function_call_output`, and the model answers.

Codex is installed by `.ci/run` (npm, pinned); elsewhere the test is skipped with a reason, unless `CI` is
set, where it must run. Codex talks only to 127.0.0.1 here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from scripted_checkpoint import build_scripted_checkpoint, script_tokens
from serving import gptoss_serve

REPO = Path(__file__).resolve().parents[1]
SECRET = "the-owl-hoots-at-midnight-4417"
ANSWER = "The file says the owl hoots at midnight."


def codex_binary() -> Path:
    for candidate in (os.environ.get("GPTOSS_CODEX"), shutil.which("codex"),
                      REPO / ".ci" / "tools" / "node_modules" / ".bin" / "codex"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    if os.environ.get("CI"):
        pytest.fail("Codex CLI is missing: .ci/run installs it (npm @openai/codex)")
    pytest.skip("Codex CLI is not installed (npm install @openai/codex; .ci/run does)")


@pytest.fixture(scope="module")
def codex_model(tmp_path_factory) -> Path:
    segments = script_tokens(
        "<|channel|>analysis<|message|>Read the file with a command.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.exec_command <|constrain|>json<|message|>{"cmd":"cat secret.txt"}<|call|>',
        f"<|channel|>final<|message|>{ANSWER}<|return|>",
    )
    # Codex's first request holds two user messages (its environment context, then the task): two markers
    return build_scripted_checkpoint(tmp_path_factory.mktemp("codex") / "model", segments, first_count=2).path


def test_codex_runs_a_tool_round_trip_against_gptoss_serve(codex_model, tmp_path):
    codex = codex_binary()
    work = tmp_path / "work"
    work.mkdir()
    (work / "secret.txt").write_text(SECRET + "\n")
    home = tmp_path / "codex-home"
    home.mkdir()
    with gptoss_serve(codex_model, tmp_path / "data", "--model-id", "gpt-oss-20b", "--max-tokens", "512") as url:
        (home / "config.toml").write_text(f'''
model = "gpt-oss-20b"
model_provider = "gptoss"
[model_providers.gptoss]
name = "gptoss-metal"
base_url = "{url}/v1"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
''')
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
        env.update(CODEX_HOME=str(home), NO_COLOR="1", RUST_LOG="error")
        run = subprocess.run([str(codex), "exec", "--json", "--skip-git-repo-check", "-s", "read-only",
                              "Read secret.txt and tell me what it says."],
                             cwd=work, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    transcript = run.stdout + run.stderr
    items = [e.get("item", {}) for e in events if e.get("type") == "item.completed"]
    commands = [i for i in items if i.get("type") == "command_execution"]
    messages = [i.get("text", "") for i in items if i.get("type") == "agent_message"]
    assert run.returncode == 0, transcript[-4000:]
    assert commands and "cat secret.txt" in commands[0]["command"], transcript[-4000:]
    assert SECRET in commands[0].get("aggregated_output", ""), transcript[-4000:]  # Codex ran our call
    assert messages and messages[-1] == ANSWER, transcript[-4000:]  # and sent its output back for the answer
