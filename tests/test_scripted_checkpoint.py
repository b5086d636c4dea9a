"""The scripted checkpoint (tests/scripted_checkpoint.py): a real converted gpt-oss checkpoint that
generates given harmony scripts turn after turn, driven here by ChatSession with the real python tool."""

from __future__ import annotations

import pytest

from gptoss_metal.assistant import Engine
from gptoss_metal.assistant.session import ChatSession, ToolResult
from gptoss_metal.harmony_io import ReasoningDelta, TextDelta, ToolCallBegin, encoding
from gptoss_metal.metal_runtime.loading import load
from scripted_checkpoint import ScriptError, ScriptedCheckpoint, build_scripted_checkpoint, script_tokens

ANSWER = "The answer is **42**:\n\n```python\nprint(6 * 7)\n```"
SCRIPTS = [
    "<|channel|>analysis<|message|>Let me compute it.<|end|><|start|>assistant<|channel|>analysis to=python code"
    "<|message|>print(6 * 7)<|call|>",
    f"<|channel|>analysis<|message|>It printed the result.<|end|><|start|>assistant<|channel|>final<|message|>"
    f"{ANSWER}<|return|>",
    "<|channel|>final<|message|>You are welcome.<|return|>",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> ScriptedCheckpoint:
    return build_scripted_checkpoint(tmp_path_factory.mktemp("scripted") / "model", script_tokens(*SCRIPTS))


def test_reasoning_python_call_markdown_answer_and_a_follow_up(checkpoint):
    session = ChatSession(Engine(load(checkpoint.path), model_id="scripted"), python_tool=True,
                          current_date="2026-11-23")
    try:
        assert checkpoint.markers(session.render().tokens) == 0  # before the user message
        events = list(session.send("What is 6 times 7?"))
        calls = [e for e in events if isinstance(e, ToolCallBegin)]
        results = [e for e in events if isinstance(e, ToolResult)]
        assert [c.recipient for c in calls] == ["python"]
        assert [(r.status, r.output) for r in results] == [("ok", "42\n")]
        assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == \
            "Let me compute it.It printed the result."
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == ANSWER
        assert session.ask("Thanks!") == "You are welcome."
        assert checkpoint.markers(session.render().tokens) == 3  # two user messages, one call
    finally:
        session.close()


def test_each_generation_is_exactly_its_segment(checkpoint):
    """The engine's raw tokens, not just the parsed text: the model writes the script token for token."""
    session = ChatSession(Engine(load(checkpoint.path), model_id="scripted"), python_tool=True)
    try:
        list(session.send("What is 6 times 7?"))
        generated = [s.generated for s in session.last_turn.steps]
        assert generated == checkpoint.segments[:2]
    finally:
        session.close()


def test_ambiguous_scripts_are_refused_with_the_colliding_steps(tmp_path):
    looping = script_tokens("<|channel|>final<|message|>" + "la " * 8 + "x<|return|>")
    with pytest.raises(ScriptError, match="same context"):
        build_scripted_checkpoint(tmp_path / "m", looping, window=3)
    with pytest.raises(ScriptError, match="must end with"):
        build_scripted_checkpoint(tmp_path / "m", [encoding().encode("no stop")])
