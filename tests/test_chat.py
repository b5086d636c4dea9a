"""ChatSession: tool loops, prompt reuse counts, interruption, persistence (scripted model double)."""

from __future__ import annotations

import json

import pytest

from doubles import ScriptedModel, cached_tokens
from gptoss_metal.harmony_io import TextDelta, ToolCallBegin, encoding, render_tool_result
from gptoss_metal.harmony_io.tokens import assistant_header
from gptoss_metal.metal_runtime import load
from gptoss_metal.assistant import Engine
from gptoss_metal.assistant.session import ChatSession, StepLimitReached, ToolResult


def E(s: str) -> list[int]:
    return encoding().encode(s, allowed_special="all")


ANALYSIS = "<|channel|>analysis<|message|>{}<|end|><|start|>assistant"
FINAL = "<|channel|>final<|message|>{}<|return|>"
CALL = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{}<|call|>'


def weather(city: str) -> dict:
    """Current weather for a city."""
    return {"city": city, "temp_c": 21}


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def session_with(replies: list[str], **kw) -> tuple[ChatSession, ScriptedModel]:
    model = ScriptedModel([E(r) for r in replies])
    s = ChatSession(Engine(model), temperature=0.0, current_date="2026-11-23", **kw)
    s.register_function(weather, name="get_weather", parameters=WEATHER_SCHEMA)
    return s, model


def test_three_turns_with_a_tool_call_in_turn_two_and_exact_prompt_reuse():
    replies = [
        ANALYSIS.format("User greets.") + FINAL.format("Hello! How can I help?"),
        ANALYSIS.format("Need weather.") + CALL.format('{"city": "Oslo"}'),
        ANALYSIS.format("Got it.") + FINAL.format("It is 21 C in Oslo."),
        FINAL.format("You are welcome."),
    ]
    s, model = session_with(replies)
    pc = s.engine.prompt_cache

    # turn 1
    events = list(s.send("Hi"))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello! How can I help?"
    t1 = s.last_turn
    assert t1.reused == 0 and t1.prefilled == t1.steps[0].prompt_tokens

    # turn 2: tool call, tool result, answer
    cache_before = list(pc.tokens)
    events = list(s.send("Weather in Oslo?"))
    calls = [e for e in events if isinstance(e, ToolCallBegin)]
    results = [e for e in events if isinstance(e, ToolResult)]
    assert [c.recipient for c in calls] == ["functions.get_weather"]
    assert results[0].status == "ok" and json.loads(results[0].output) == {"city": "Oslo", "temp_c": 21}
    assert s.messages[-1]["content"] == "It is 21 C in Oslo."
    t2 = s.last_turn
    assert len(t2.steps) == 2
    a, b = t2.steps
    # step a reuses turn 1 up to where turn 1's reasoning was dropped (a snapshot at turn 1's prompt end)
    assert a.reused_tokens == t1.steps[0].prompt_tokens - 1
    assert a.reused_tokens < len(cache_before)
    # step b continues from the model's raw tokens: only the tool result and the header are new
    tool_result = render_tool_result("get_weather", results[0].output)
    assert b.prefilled_tokens == len(tool_result) + len(assistant_header())
    assert b.reused_tokens == a.prompt_tokens + a.generated_tokens

    # turn 3: turn 2's reasoning before the call is dropped from history (harmony rule), so
    # the call is re-prefilled from the snapshot where step a's prompt ended; nothing earlier is.
    list(s.send("Thanks!"))
    t3 = s.last_turn
    assert t3.reused == a.prompt_tokens - 1
    assert t3.prefilled == t3.steps[0].prompt_tokens - t3.reused
    # the cache holds exactly the current prompt + what was generated (read back from the KV)
    held = cached_tokens(pc.cache)
    assert held == pc.tokens
    assert model.generations == 4


def test_tool_call_without_preceding_reasoning_keeps_the_whole_turn_cached():
    replies = [
        FINAL.format("Hi."),
        CALL.format('{"city": "Rome"}'),
        FINAL.format("Sunny, 21 C."),
        FINAL.format("Bye."),
    ]
    s, _ = session_with(replies)
    list(s.send("Hello"))
    list(s.send("Weather in Rome?"))
    list(s.send("Thanks"))
    t2, t3 = s.history_reports[1], s.history_reports[2]
    # turn 3 prefills only: <|end|> of turn 2's answer (stored for <|return|>), the user message, the header
    new_part = E("<|end|><|start|>user<|message|>Thanks<|end|>") + assistant_header()
    assert t3.prefilled == len(new_part)
    assert t3.reused == t3.steps[0].prompt_tokens - len(new_part)
    # turn 2 step 2 too: only the tool result and the header
    assert t2.steps[1].prefilled_tokens == len(render_tool_result("get_weather", '{"city": "Rome", "temp_c": 21}')) + 2


def test_unknown_tools_and_bad_arguments_become_tool_errors_and_the_loop_continues():
    replies = [
        '<|channel|>commentary to=functions.launch_rockets <|constrain|>json<|message|>{}<|call|>',
        CALL.format("{not json"),
        FINAL.format("Sorry."),
    ]
    s, _ = session_with(replies)
    events = list(s.send("Do it"))
    results = [e for e in events if isinstance(e, ToolResult)]
    assert results[0].status == "unknown" and "no tool 'functions.launch_rockets'" in results[0].output
    assert results[1].status == "error" and "not valid JSON" in results[1].output
    assert s.messages[-1]["content"] == "Sorry."


def test_a_function_registered_without_parameters_renders_an_empty_parameter_list():
    s, _ = session_with([CALL.replace("get_weather", "now").format("{}"), FINAL.format("Noon.")])
    s.register_function(lambda: "12:00", name="now", description="The time.")
    assert "parameters" not in s.functions.tools["now"].openai_spec()["function"]
    assert "type now = () => any;" in encoding().decode(s.prompt_tokens())
    events = list(s.send("Time?"))
    assert [e.output for e in events if isinstance(e, ToolResult)] == ["12:00"]
    assert s.messages[-1]["content"] == "Noon."


def test_step_limit_stops_a_runaway_tool_loop():
    s, _ = session_with([CALL.format('{"city": "X"}')] * 5, max_tool_steps=2)
    events = list(s.send("loop"))
    assert isinstance(events[-1], StepLimitReached)
    assert sum(isinstance(e, ToolResult) for e in events) == 2


def test_python_tool_call_runs_in_the_sandbox_and_keeps_state():
    replies = [
        "<|channel|>analysis to=python code<|message|>x = 6 * 7\nx<|call|>",
        "<|channel|>analysis to=python code<|message|>x + 1<|call|>",
        FINAL.format("43"),
    ]
    s, _ = session_with(replies, python_tool=True)
    try:
        results = [e for e in s.send("compute") if isinstance(e, ToolResult)]
        assert [r.output.strip() for r in results] == ["42", "43"]
        rendered = encoding().decode(s.prompt_tokens())
        assert "<|start|>python to=assistant<|channel|>analysis<|message|>42" in rendered
    finally:
        s.close()


def test_interrupted_turn_keeps_the_partial_answer_marked_and_the_next_turn_is_consistent():
    long_answer = FINAL.format("word " * 50)
    s, model = session_with([long_answer, FINAL.format("Second.")])
    gen = s.send("Tell me a story")
    seen = []
    for ev in gen:
        if isinstance(ev, TextDelta):
            seen.append(ev.text)
            if len(seen) == 5:
                break
    gen.close()  # what Ctrl-C in the terminal does
    partial = s.messages[-1]
    assert partial["interrupted"] is True and partial["content"].startswith("word word")
    assert s.last_turn.interrupted
    list(s.send("Go on"))
    assert s.messages[-1]["content"] == "Second."
    assert cached_tokens(s.engine.prompt_cache.cache) == s.engine.prompt_cache.tokens


def test_save_and_load_round_trip(tmp_path):
    s, _ = session_with([ANALYSIS.format("r") + FINAL.format("Hi!")])
    list(s.send("Hello"))
    s.set_effort("high")
    s.save(tmp_path / "conv.json")
    other, _ = session_with([])
    other.load(tmp_path / "conv.json")
    assert other.messages == s.messages and other.effort == "high"
    assert other.prompt_tokens() == s.prompt_tokens()
    (tmp_path / "bad.json").write_text('{"version": 99}')
    from gptoss_metal.assistant import AssistantError

    with pytest.raises(AssistantError, match="not a saved gptoss conversation"):
        other.load(tmp_path / "bad.json")
    assert other.messages == s.messages  # a failed load changes nothing


def test_real_tiny_model_chat_reuses_the_previous_prompt(tiny_runtime):
    s = ChatSession(Engine(load(tiny_runtime, dtype="float32")), temperature=0.0, max_tokens=8,
                    current_date="2026-11-23")
    list(s.send("Hello"))
    first = s.last_turn.steps[0]
    list(s.send("And again"))
    second = s.last_turn.steps[0]
    assert second.reused_tokens >= first.prompt_tokens - 1
    assert second.prefilled_tokens == second.prompt_tokens - second.reused_tokens


def test_a_version_1_save_still_loads_with_its_exact_history(tmp_path):
    s, _ = session_with([ANALYSIS.format("r") + FINAL.format("Hi!")])
    list(s.send("Hello"))
    assert "exact_history" in s.messages[-1]
    s.save(tmp_path / "v2.json")
    data = json.loads((tmp_path / "v2.json").read_text())
    data["version"] = 1  # what gptoss 0.1 wrote: exact history under "harmony_messages"
    data["messages"] = [{("harmony_messages" if k == "exact_history" else k): v for k, v in m.items()}
                        for m in data["messages"]]
    (tmp_path / "v1.json").write_text(json.dumps(data))
    other, _ = session_with([])
    other.load(tmp_path / "v1.json")
    assert other.messages == s.messages
    assert other.prompt_tokens() == s.prompt_tokens()
