"""Agent loops through the unmodified `openai` client, on a real checkpoint, through the real server.

The model is a checkpoint built by `scripted_checkpoint` (converter, loader, MLX model: nothing is a
double) that reasons, calls a function and, once the function's result is in its context, answers.
The tools, the user's request, the expected arguments and the tool's output are a case of openai/gpt-oss's
compatibility test (../shared/peer-data/gptoss/compatibility-test). Every loop: the model calls the
function, the client answers it, the model continues; on Chat Completions (assistant `tool_calls` +
`tool` message) and Responses (stateless with the output items echoed back, and stateful with
`previous_response_id`), streamed and not. Sampling is left at the API's default (temperature 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import openai
import pytest

from gptoss_metal.assistant import Engine
from gptoss_metal.harmony_io import assistant_header, render_tool_result
from gptoss_metal.server.openai_api import OpenAIService
from peer_data import peer_file
from scripted_checkpoint import build_scripted_checkpoint, script_tokens
from serving import live_server

CASE_INDEX = 16  # generate_chart with a title: nested arrays, several arguments


@dataclass(frozen=True)
class Compat:
    """One case of the compatibility test and the tool list, in the shapes each endpoint takes."""

    case: dict
    tool: dict
    chat_tools: list
    responses_tools: list

    @property
    def reasoning(self) -> str:
        return f"The user wants a chart, so call {self.case['tool_name']}."


ANSWER = "Here is your **Quarterly Sales** chart:\n\n```text\nbar chart, 3 quarters\n```"


@pytest.fixture(scope="module")
def compat() -> Compat:
    cases = [json.loads(line) for line in peer_file("gptoss/compatibility-test/cases.jsonl").read_text().splitlines()]
    tools = json.loads(peer_file("gptoss/compatibility-test/tools.json").read_text())
    case = cases[CASE_INDEX]
    return Compat(
        case=case,
        tool=next(t for t in tools if t["name"] == case["tool_name"]),
        chat_tools=[{"type": "function", "function": {k: v for k, v in t.items() if k not in ("type", "output")}}
                    for t in tools],
        responses_tools=[{k: v for k, v in t.items() if k != "output"} | {"strict": False} for t in tools])


@pytest.fixture(scope="module")
def agent(tmp_path_factory, compat):
    segments = script_tokens(
        f"<|channel|>analysis<|message|>{compat.reasoning}<|end|><|start|>assistant<|channel|>commentary "
        f"to=functions.{compat.case['tool_name']} <|constrain|>json<|message|>{compat.case['expected_arguments']}"
        f"<|call|>",
        f"<|channel|>final<|message|>{ANSWER}<|return|>",
    )
    ckpt = build_scripted_checkpoint(tmp_path_factory.mktemp("agent") / "model", segments)
    service = OpenAIService(Engine(ckpt.load(), model_id="agent"), current_date="2026-11-23")
    with live_server(service) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def check_call(compat: Compat, name: str, arguments: str) -> None:
    assert name == compat.case["tool_name"]
    assert json.loads(arguments) == json.loads(compat.case["expected_arguments"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_completions_agent_loop(agent, compat, stream):
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": compat.case["input"]}]
    first = chat(agent, compat, messages, stream)
    assert first["finish_reason"] == "tool_calls" and first["reasoning"] == compat.reasoning
    (call,) = first["tool_calls"]
    check_call(compat, call["function"]["name"], call["function"]["arguments"])
    messages += [{"role": "assistant", "content": first["content"], "tool_calls": first["tool_calls"]},
                 {"role": "tool", "tool_call_id": call["id"], "content": compat.tool["output"]}]
    second = chat(agent, compat, messages, stream)
    assert second["content"] == ANSWER and second["finish_reason"] == "stop" and not second["tool_calls"]
    # the server found its own tokens for the echoed call: only the tool result and the header were new
    new = render_tool_result(compat.case["tool_name"], compat.tool["output"]) + assistant_header()
    assert second["usage"].prompt_tokens - second["usage"].prompt_tokens_details.cached_tokens == len(new)


def chat(client: openai.OpenAI, compat: Compat, messages: list[dict], stream: bool) -> dict:
    """One Chat Completions turn, as a client assembles it (from deltas when streaming)."""
    if not stream:
        r = client.chat.completions.create(model="agent", messages=messages, tools=compat.chat_tools)
        m = r.choices[0].message
        calls = [c.model_dump() for c in m.tool_calls or []]
        return {"content": m.content, "reasoning": m.model_extra.get("reasoning"), "tool_calls": calls,
                "finish_reason": r.choices[0].finish_reason, "usage": r.usage}
    out: dict = {"content": "", "reasoning": "", "tool_calls": [], "finish_reason": None, "usage": None}
    for chunk in client.chat.completions.create(model="agent", messages=messages, tools=compat.chat_tools, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage is not None:
            out["usage"] = chunk.usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        out["content"] += delta.content or ""
        out["reasoning"] += (delta.model_extra or {}).get("reasoning") or ""
        for tc in delta.tool_calls or []:
            if tc.index == len(out["tool_calls"]):
                out["tool_calls"].append({"id": tc.id, "type": "function",
                                          "function": {"name": tc.function.name, "arguments": ""}})
            out["tool_calls"][tc.index]["function"]["arguments"] += tc.function.arguments or ""
        out["finish_reason"] = chunk.choices[0].finish_reason or out["finish_reason"]
    out["content"] = out["content"] or None
    return out


def respond(client: openai.OpenAI, compat: Compat, stream: bool, **kwargs):
    """One Responses turn: the final response object (from `response.completed` when streaming)."""
    kwargs = dict(model="agent", tools=compat.responses_tools, instructions="", **kwargs)
    if not stream:
        return client.responses.create(**kwargs)
    events = list(client.responses.create(stream=True, **kwargs))
    assert events[-1].type == "response.completed"
    streamed = [e.item for e in events if e.type == "response.output_item.done"]
    assert [i.id for i in streamed] == [i.id for i in events[-1].response.output]
    return events[-1].response


def first_response_checks(compat: Compat, r) -> object:
    assert [o.type for o in r.output] == ["reasoning", "function_call"]
    assert r.output[0].content[0].text == compat.reasoning
    call = r.output[1]
    check_call(compat, call.name, call.arguments)
    return call


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_agent_loop_stateless(agent, compat, stream):
    history = [{"role": "user", "content": compat.case["input"]}]
    r1 = respond(agent, compat, stream, input=history)
    call = first_response_checks(compat, r1)
    history += [o.model_dump(exclude_none=True) for o in r1.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": compat.tool["output"]})
    r2 = respond(agent, compat, stream, input=history)
    assert r2.status == "completed" and r2.output_text == ANSWER


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_agent_loop_previous_response_id(agent, compat, stream):
    r1 = respond(agent, compat, stream, input=compat.case["input"])
    call = first_response_checks(compat, r1)
    r2 = respond(agent, compat, stream, previous_response_id=r1.id,
                 input=[{"type": "function_call_output", "call_id": call.call_id, "output": compat.tool["output"]}])
    assert r2.status == "completed" and r2.output_text == ANSWER
    new = render_tool_result(compat.case["tool_name"], compat.tool["output"]) + assistant_header()
    assert r2.usage.input_tokens - r2.usage.input_tokens_details.cached_tokens == len(new)
