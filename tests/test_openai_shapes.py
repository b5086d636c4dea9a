"""Every field of our Responses and Chat Completions objects and stream events, checked against the
OpenAI Responses streams recorded from OpenAI's own server (openai/gpt-oss tests-data, in
../shared/peer-data) and against the installed openai SDK's pydantic models.

The bodies are captured raw from the real server (HTTP, SSE), with the scripted model double: the
shapes depend on the parser events, not on the weights.
"""

from __future__ import annotations

import json
import typing
from collections import defaultdict

import httpx
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from doubles import ScriptedModel
from gptoss_metal.assistant import Engine
from gptoss_metal.harmony_io import encoding
from gptoss_metal.server.openai_api import OpenAIService
from peer_data import sse_events
from serving import live_server

RECORDED = ["gptoss/tests-data/basic-event-stream.txt", "gptoss/tests-data/web-search-event-stream.txt"]
RESP_WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
SCRIPTS = {
    "basic": "<|channel|>analysis<|message|>Greet.<|end|><|start|>assistant<|channel|>final<|message|>Hello there!<|return|>",
    "tool": ("<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary<|message|>"
             "Checking.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
             '<|message|>{"city": "Oslo"}<|call|>'),
    "cut": "<|channel|>final<|message|>one two three four five six seven<|return|>",
}
# Fields we send that the recorded (o-series, hidden reasoning) streams do not have, and why
EXTENSIONS = {
    "item reasoning": {"content"},  # gpt-oss shows its reasoning (reasoning_text parts), as its reference server does
    "response.usage.input_tokens_details": {"cache_write_tokens"},  # required by the current SDK's InputTokensDetails
}


def E(s: str) -> list[int]:
    return encoding().encode(s, allowed_special="all")


def sse(text: str) -> list[dict]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and "[DONE]" not in line]


@pytest.fixture(scope="module")
def captured():
    """Raw bodies for each script: Responses and Chat, streamed and not."""
    model = ScriptedModel()
    service = OpenAIService(Engine(model, model_id="scripted"), current_date="2026-11-23")
    out: dict[str, dict] = {}
    with live_server(service) as url:
        for name, script in SCRIPTS.items():
            limit = 5 if name == "cut" else None  # the header takes 3
            body = {"model": "scripted", "input": "Hi", "tools": [RESP_WEATHER], "instructions": "Be brief.",
                    "reasoning": {"effort": "low", "summary": "detailed"}, "max_output_tokens": limit}
            chat = {"model": "scripted", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": limit,
                    "tools": [{"type": "function", "function": {k: v for k, v in RESP_WEATHER.items() if k != "type"}}],
                    "stream_options": {"include_usage": True}}
            model.add_reply(E(script))
            out[f"responses {name}"] = httpx.post(url + "/v1/responses", json=body, timeout=60).json()
            model.add_reply(E(script))
            out[f"responses-stream {name}"] = sse(httpx.post(url + "/v1/responses", json=dict(body, stream=True),
                                                             timeout=60).text)
            model.add_reply(E(script))
            out[f"chat {name}"] = httpx.post(url + "/v1/chat/completions", json=chat, timeout=60).json()
            model.add_reply(E(script))
            out[f"chat-stream {name}"] = sse(httpx.post(url + "/v1/chat/completions", json=dict(chat, stream=True),
                                                        timeout=60).text)
    return out


def event_classes() -> dict[str, type]:
    union = ResponseStreamEvent
    if typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    return {t: cls for cls in typing.get_args(union) for t in typing.get_args(cls.model_fields["type"].annotation)}


def test_the_sdk_models_validate_every_object_and_event(captured):
    classes = event_classes()
    for name, body in captured.items():
        if name.startswith("responses-stream"):
            for ev in body:
                classes[ev["type"]].model_validate(ev)
        elif name.startswith("responses"):
            Response.model_validate(body)
        elif name.startswith("chat-stream"):
            for chunk in body:
                ChatCompletionChunk.model_validate(chunk)
        else:
            ChatCompletion.model_validate(body)


def jtype(v) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "object",
            type(None): "null"}[type(v)]


def fields(events: list[dict]) -> dict[str, dict[str, set[str]]]:
    """context (`event X`, `response`, `item X`, `part X`, nested objects) -> field -> JSON types."""
    table: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))

    def walk(ctx: str, obj: dict) -> None:
        for k, v in obj.items():
            table[ctx][k].add(jtype(v))
            if k == "response":
                walk("response", v)
            elif k in ("item", "part"):
                walk(f"{k} {v['type']}", v)
            elif k == "output":
                for item in v:
                    walk(f"item {item['type']}", item)
            elif k == "content" and ctx == "item message":
                for part in v:
                    walk(f"part {part['type']}", part)
            elif isinstance(v, dict):
                walk(f"{ctx}.{k}", v)

    for ev in events:
        walk(f"event {ev['type']}", ev)
    return table


def test_field_sets_and_types_match_the_recorded_openai_streams(captured):
    recorded = fields([e for f in RECORDED for e in sse_events(f)])
    ours = fields([e for name, evs in captured.items() if name.startswith("responses-stream") for e in evs]
                  + [{"type": "non-streamed", "response": b} for name, b in captured.items()
                     if name.startswith("responses ")])
    shared = sorted(set(recorded) & set(ours) - {"event non-streamed"})
    assert {"response", "item message", "item reasoning", "part output_text", "response.usage",
            "event response.output_text.delta", "event response.content_part.added"} <= set(shared)
    for ctx in shared:
        missing = set(recorded[ctx]) - set(ours[ctx])
        extra = set(ours[ctx]) - set(recorded[ctx]) - EXTENSIONS.get(ctx, set())
        assert not missing and not extra, (ctx, missing, extra)
        for key in recorded[ctx]:
            a, b = recorded[ctx][key] - {"null"}, ours[ctx][key] - {"null"}
            assert not (a and b) or a == b or a <= b or b <= a, (ctx, key, a, b)
    assert ours["response"]["created_at"] == {"int"} and ours["response"]["temperature"] == {"float"}


def test_stream_invariants_of_the_recorded_streams_hold_for_ours(captured):
    streams = {f: sse_events(f) for f in RECORDED}
    streams.update({n: e for n, e in captured.items() if n.startswith("responses-stream")})
    for name, evs in streams.items():
        assert [e["sequence_number"] for e in evs] == list(range(len(evs))), name
        snapshots = [e["response"] for e in evs if "response" in e]
        assert len({r["created_at"] for r in snapshots}) == 1 and isinstance(snapshots[0]["created_at"], int), name
        done = {e["output_index"]: e["item"] for e in evs if e["type"] == "response.output_item.done"}
        assert snapshots[-1]["output"] == [done[i] for i in sorted(done)], name
        added = [e["item"]["id"] for e in evs if e["type"] == "response.output_item.added"]
        assert added == [done[i]["id"] for i in sorted(done)], name
        for e in evs:
            if e["type"].startswith("response.content_part."):
                assert e["part"]["logprobs"] == [], name


def without_ids(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in item.items() if k not in ("id", "call_id")} for item in items]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_streamed_and_non_streamed_responses_return_the_same_output(captured, name):
    body, evs = captured[f"responses {name}"], captured[f"responses-stream {name}"]
    final = evs[-1]["response"]
    assert without_ids(body["output"]) == without_ids(final["output"])
    assert (body["status"], body["incomplete_details"]) == (final["status"], final["incomplete_details"])
    # the request's settings, echoed as they took effect
    assert body["reasoning"] == {"effort": "low", "summary": "detailed"}
    assert body["temperature"] == body["top_p"] == 1.0 and body["store"] is True
    assert body["usage"]["input_tokens_details"]["cached_tokens"] >= 0


def test_output_items_follow_the_harmony_messages(captured):
    types = [i["type"] for i in captured["responses tool"]["output"]]
    assert types == ["reasoning", "message", "function_call"]
    cut = captured["responses cut"]
    assert cut["status"] == "incomplete" and cut["output"][0]["status"] == "incomplete"
    assert captured["responses-stream cut"][-1]["type"] == "response.incomplete"


def test_chat_sends_reasoning_and_keeps_reasoning_content(captured):
    msg = captured["chat tool"]["choices"][0]["message"]
    assert msg["reasoning"] == msg["reasoning_content"] == "Need weather."
    assert msg["refusal"] is None and msg["annotations"] == []
    deltas = [c["choices"][0]["delta"] for c in captured["chat-stream tool"] if c["choices"]]
    assert "".join(d.get("reasoning", "") for d in deltas) == "Need weather."
    assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)
    streamed_call = next(d["tool_calls"][0] for d in deltas if "tool_calls" in d)
    assert streamed_call["id"].startswith("call_") and streamed_call["function"]["name"] == "get_weather"
