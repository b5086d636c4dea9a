"""Rendering: golden equality with openai-harmony, the per-turn analysis rule, raw history, schemas."""

from __future__ import annotations

import json

import pytest
from openai_harmony import (
    Author, Conversation, DeveloperContent, Message, ReasoningEffort, RenderConversationConfig, Role,
    SystemContent, ToolDescription,
)

from gptoss_metal.harmony_io import encoding, render_prompt, render_tool_result
from gptoss_metal.harmony_io.errors import HarmonyIOError
from gptoss_metal.harmony_io.schema import flatten_schema
from gptoss_metal.harmony_io.tokens import END, RETURN

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def lib_render(msgs: list[Message]) -> list[int]:
    return encoding().render_conversation_for_completion(
        Conversation.from_messages(msgs), Role.ASSISTANT, RenderConversationConfig(auto_drop_analysis=False))


def sys_msg(effort=ReasoningEffort.MEDIUM, date=None, python=False) -> Message:
    sc = SystemContent.new().with_reasoning_effort(effort)
    if date:
        sc = sc.with_conversation_start_date(date)
    if python:
        sc = sc.with_python_tool()
    return Message.from_role_and_content(Role.SYSTEM, sc)


def test_golden_single_user_turn():
    ours = render_prompt([{"role": "user", "content": "Hi there"}])
    assert ours == lib_render([sys_msg(), Message.from_role_and_content(Role.USER, "Hi there")])
    assert encoding().decode(ours).endswith("<|start|>user<|message|>Hi there<|end|><|start|>assistant")


def test_golden_system_becomes_developer_instructions_with_tools_and_effort():
    ours = render_prompt(
        [{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Use metric."},
         {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Paris?"}]}],
        tools=[WEATHER], reasoning_effort="high", current_date="2026-11-23",
    )
    dev = DeveloperContent.new().with_instructions("Be brief.\n\nUse metric.").with_function_tools(
        [ToolDescription.new("get_weather", "Current weather", WEATHER["function"]["parameters"])])
    want = lib_render([sys_msg(ReasoningEffort.HIGH, "2026-11-23"), Message.from_role_and_content(Role.DEVELOPER, dev),
                       Message.from_role_and_content(Role.USER, "Weather in Paris?")])
    assert ours == want


def test_golden_tool_round_trip_in_progress():
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "reasoning": "Need the tool.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 20}'},
    ]
    ours = render_prompt(msgs, tools=[WEATHER])
    dev = DeveloperContent.new().with_function_tools(
        [ToolDescription.new("get_weather", "Current weather", WEATHER["function"]["parameters"])])
    want = lib_render([
        sys_msg(), Message.from_role_and_content(Role.DEVELOPER, dev),
        Message.from_role_and_content(Role.USER, "Weather in Paris?"),
        Message.from_role_and_content(Role.ASSISTANT, "Need the tool.").with_channel("analysis"),
        Message.from_role_and_content(Role.ASSISTANT, '{"city":"Paris"}').with_channel("commentary")
        .with_recipient("functions.get_weather").with_content_type("<|constrain|>json"),
        Message.from_author_and_content(Author.new(Role.TOOL, "functions.get_weather"), '{"temp": 20}')
        .with_channel("commentary").with_recipient("assistant"),
    ])
    # the call as the model writes it (format.md), where the library writes `to=` first
    canonical = "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>"
    model_order = "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    assert canonical in encoding().decode(want)
    assert ours == encoding().encode(encoding().decode(want).replace(canonical, model_order), allowed_special="all")
    text = encoding().decode(ours)
    assert "Need the tool." in text  # the turn is still in its tool loop: reasoning kept
    assert "<|constrain|>json<|message|>" in text and "<|call|>" in text


def _four_turns() -> list[dict]:
    msgs = []
    for i in range(4):
        msgs.append({"role": "user", "content": f"question {i}"})
        msgs.append({"role": "assistant", "reasoning": f"thinking {i}", "content": f"answer {i}"})
    msgs.append({"role": "user", "content": "question 4"})
    msgs.append({"role": "assistant", "reasoning": "thinking 4", "tool_calls": [
        {"id": "c4", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]})
    msgs.append({"role": "tool", "tool_call_id": "c4", "content": "sunny"})
    return msgs


def test_per_turn_analysis_rule_over_many_turns():
    text = encoding().decode(render_prompt(_four_turns(), tools=[WEATHER]))
    for i in range(4):
        assert f"thinking {i}" not in text and f"answer {i}" in text
    assert "thinking 4" in text  # current turn, inside a tool loop
    kept = encoding().decode(render_prompt(_four_turns(), tools=[WEATHER], keep_analysis=True))
    assert all(f"thinking {i}" in kept for i in range(5))


def test_library_auto_drop_keeps_later_reasoning_which_is_why_we_do_it_ourselves():
    msgs = [sys_msg()]
    for i in range(3):
        msgs += [Message.from_role_and_content(Role.USER, f"q{i}"),
                 Message.from_role_and_content(Role.ASSISTANT, f"thinking {i}").with_channel("analysis"),
                 Message.from_role_and_content(Role.ASSISTANT, f"a{i}").with_channel("final")]
    msgs.append(Message.from_role_and_content(Role.USER, "q3"))
    lib = encoding().decode(encoding().render_conversation_for_completion(Conversation.from_messages(msgs), Role.ASSISTANT))
    ours = encoding().decode(render_prompt(
        [m for i in range(3) for m in ({"role": "user", "content": f"q{i}"},
                                       {"role": "assistant", "reasoning": f"thinking {i}", "content": f"a{i}"})]
        + [{"role": "user", "content": "q3"}]))
    # the library drops only what precedes the first final: later turns leak their reasoning
    assert [f"thinking {i}" in lib for i in range(3)] == [False, True, True]
    assert not any(f"thinking {i}" in ours for i in range(3))


def test_exact_history_is_spliced_verbatim_and_return_becomes_end():
    enc = encoding()
    E = lambda s: enc.encode(s, allowed_special="all")  # noqa: E731
    call = E("<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>")
    final = E("<|start|>assistant<|channel|>final<|message|>It is sunny.<|return|>")
    msgs = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": "{}"}}],
         "exact_history": [{"tokens": call, "channel": "commentary", "recipient": "functions.get_weather"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny.",
         "exact_history": [{"tokens": final, "channel": "final"}]},
        {"role": "user", "content": "Thanks"},
    ]
    toks = render_prompt(msgs, tools=[WEATHER])
    s = enc.decode(toks)
    # the model's own header order survives (to= after <|channel|>), the library's would not
    assert "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json" in s
    assert "It is sunny.<|end|><|start|>user" in s and RETURN not in toks
    # the splice path equals the library path when the raw tokens are the library's own rendering
    lib_like = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello",
                 "exact_history": [{"tokens": E("<|start|>assistant<|channel|>final<|message|>Hello<|end|>"),
                                       "channel": "final"}]},
                {"role": "user", "content": "Bye"}]
    plain = [dict(m, exact_history=None) if m["role"] == "assistant" else m for m in lib_like]
    assert render_prompt(lib_like, tools=[WEATHER]) == render_prompt(plain, tools=[WEATHER])


def test_tool_result_tokens_match_the_full_rendering():
    enc = encoding()
    tail = render_tool_result("get_weather", "sunny")
    assert enc.decode(tail) == "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>sunny<|end|>"
    assert tail[-1] == END


def test_builtin_python_tool_is_declared_and_rendered():
    toks = render_prompt([{"role": "user", "content": "compute"}], builtin_tools=("python",))
    assert toks == lib_render([sys_msg(python=True), Message.from_role_and_content(Role.USER, "compute")])
    assert "## python" in encoding().decode(toks)


@pytest.mark.parametrize("bad,match", [
    ([{"role": "robot", "content": "x"}], "unknown role"),
    ([{"role": "tool", "content": "x"}], "needs a 'name'"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "unsupported content part"),
    (["not a dict"], "must be an object"),
])
def test_bad_messages_are_clear_errors(bad, match):
    with pytest.raises(HarmonyIOError, match=match):
        render_prompt(bad)


@pytest.mark.parametrize("tools,match", [
    ([{"type": "function", "function": {"name": "bad name!"}}], "invalid function name"),
    ([{"type": "code_interpreter"}], "unsupported tool type"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], "object schema"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/$defs/Nope"}}}], "unresolvable"),
    ([WEATHER, WEATHER], "duplicate"),
])
def test_bad_tools_are_clear_errors(tools, match):
    with pytest.raises(HarmonyIOError, match=match):
        render_prompt([{"role": "user", "content": "x"}], tools=tools)


def _ts(params: dict) -> str:
    s = encoding().decode(render_prompt([{"role": "user", "content": "x"}],
                                        tools=[{"type": "function", "function": {"name": "f", "parameters": params}}]))
    return s[s.index("type f"):s.index("} // namespace")]


def test_schema_flattening_keeps_what_the_library_would_lose():
    schema = {
        "type": "object",
        "$defs": {"Unit": {"type": "string", "enum": ["c", "f"]},
                  "Place": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        "properties": {
            "unit": {"$ref": "#/$defs/Unit"},
            "place": {"$ref": "#/$defs/Place"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "mode": {"const": "fast"},
            "level": {"enum": [1, 2, 3]},
            "both": {"allOf": [{"$ref": "#/$defs/Place"}, {"properties": {"zip": {"type": "string"}}}]},
        },
        "required": ["unit", "place"],
    }
    ts = _ts(schema)
    assert 'unit: "c" | "f"' in ts
    assert "city: string" in ts
    assert "note?: string | null" in ts
    assert "| string" in ts and "| number" in ts
    assert 'mode?: "fast"' in ts
    assert "level?: number" in ts and "(one of: 1, 2, 3)" in ts
    assert "zip?: string" in ts
    raw = encoding().decode(encoding().render(Message.from_role_and_content(
        Role.DEVELOPER, DeveloperContent.new().with_function_tools([ToolDescription.new("f", "", schema)]))))
    assert raw.count(": any") >= 5  # what the library alone renders


def test_recursive_schema_terminates():
    schema = {"type": "object", "$defs": {"Node": {"type": "object", "properties": {
        "value": {"type": "integer"}, "next": {"$ref": "#/$defs/Node"}}}}, "properties": {"head": {"$ref": "#/$defs/Node"}}}
    flat = flatten_schema(schema)
    assert "recursive Node" in json.dumps(flat)
    assert "value?: number" in _ts(schema)
