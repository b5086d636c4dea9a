"""Parser events -> OpenAI Chat Completions and Responses shapes, whole and streamed."""

from __future__ import annotations

import itertools
import json

from gptoss_metal.harmony_io import AssistantTurn, ChatStreamMapper, ResponsesStreamMapper, StreamParser, chat_message, encoding, responses_items

TOOLS = ["functions.get_weather"]


def ids():
    counter = itertools.count()
    return lambda prefix: f"{prefix}_{next(counter)}"


def events_of(s: str):
    p = StreamParser(TOOLS)
    out = []
    for t in encoding().encode(s, allowed_special="all"):
        out += p.feed(t)
    return out + p.finish()


TOOL_TURN = ("<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary"
             "<|message|>Checking.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather "
             "<|constrain|>json<|message|>{\"city\": \"Oslo\"}<|call|>")
FINAL_TURN = "<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final<|message|>It is 4.<|return|>"


def test_chat_message_for_a_tool_call_turn():
    turn = AssistantTurn(id_factory=ids()).extend(events_of(TOOL_TURN))
    msg = chat_message(turn)
    assert msg == {
        "role": "assistant", "content": "Checking.", "refusal": None, "annotations": [],
        "reasoning": "Need weather.", "reasoning_content": "Need weather.",
        "tool_calls": [{"id": "call_0", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
    }
    assert turn.finish_reason == "tool_calls"
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert [m["channel"] for m in turn.messages] == ["analysis", "commentary", "commentary"]
    assert turn.messages[0]["tokens"][:2] == [200006, 173781]  # <|start|>assistant from the prompt


def test_chat_message_for_a_final_turn_and_responses_items():
    turn = AssistantTurn(id_factory=ids()).extend(events_of(FINAL_TURN))
    assert chat_message(turn) == {"role": "assistant", "content": "It is 4.", "refusal": None, "annotations": [],
                                  "reasoning": "Easy.", "reasoning_content": "Easy."}
    assert turn.finish_reason == "stop"
    items = responses_items(turn, ids())
    assert [i["type"] for i in items] == ["reasoning", "message"]
    assert items[1]["content"][0] == {"type": "output_text", "text": "It is 4.", "annotations": [], "logprobs": []}
    tool_items = responses_items(AssistantTurn(id_factory=ids()).extend(events_of(TOOL_TURN)), ids())
    fc = tool_items[-1]
    assert fc["type"] == "function_call" and fc["name"] == "get_weather" and fc["call_id"] == "call_0"
    assert fc["status"] == "completed"


def test_chat_stream_deltas_reassemble_the_message():
    m = ChatStreamMapper(AssistantTurn(id_factory=ids()))
    deltas = [d for e in events_of(TOOL_TURN) for d in m(e)]
    assert "".join(d.get("reasoning", "") for d in deltas) == "Need weather."
    assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)
    assert "".join(d.get("content", "") for d in deltas) == "Checking."
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["id"] == "call_0" and calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"].get("arguments", "") for c in calls) == '{"city": "Oslo"}'
    assert all(c["index"] == 0 for c in calls)


def test_responses_stream_event_sequence():
    m = ResponsesStreamMapper(AssistantTurn(id_factory=ids()), ids())
    evs = [x for e in events_of(TOOL_TURN) for x in m(e)]
    types = [e["type"] for e in evs]
    assert types[0] == "response.output_item.added"
    assert "response.reasoning_text.delta" in types and "response.reasoning_text.done" in types
    assert "response.output_text.delta" in types and "response.content_part.done" in types
    assert "response.function_call_arguments.delta" in types
    done = [e for e in evs if e["type"] == "response.output_item.done"]
    assert [d["item"]["type"] for d in done] == ["reasoning", "message", "function_call"]
    assert done[-1]["item"]["arguments"] == '{"city": "Oslo"}'
    # every added item is done exactly once, in order
    added = [e["output_index"] for e in evs if e["type"] == "response.output_item.added"]
    assert added == [d["output_index"] for d in done] == [0, 1, 2]
    assert [i["type"] for i in m.items] == ["reasoning", "message", "function_call"]
