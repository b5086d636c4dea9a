"""The OpenAI-compatible server against the official `openai` client, on a live local socket."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from doubles import ScriptedModel
from gptoss_metal.harmony_io import assistant_header, encoding, render_tool_result
from gptoss_metal.metal_runtime import load
from serving import live_server
from gptoss_metal.assistant import Engine
from gptoss_metal.server.openai_api import OpenAIService

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
RESP_WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
                "parameters": WEATHER["function"]["parameters"]}


def E(s: str) -> list[int]:
    return encoding().encode(s, allowed_special="all")


@pytest.fixture(scope="module")
def tiny_server(tiny_runtime):
    service = OpenAIService(Engine(load(tiny_runtime), model_id="tiny"), default_max_tokens=12,
                            current_date="2026-11-23")
    with live_server(service, api_key="sekret") as url:
        yield url, service


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server[0] + "/v1", api_key="sekret", max_retries=0)


@pytest.fixture
def scripted():
    model = ScriptedModel()
    service = OpenAIService(Engine(model, model_id="scripted"), current_date="2026-11-23")
    with live_server(service) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0), model, service


def test_models_and_health(client, tiny_server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(tiny_server[0] + "/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"


def test_chat_non_streaming_and_streaming(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                       max_tokens=8, seed=1)
    assert r.object == "chat.completion" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 50
    text = r.choices[0].message.content
    assert isinstance(text, str) and text
    # same seed, streamed: the same text, delta by delta
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                                 max_tokens=8, seed=1, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8
    # the second identical request reused the cached prompt (all but the last token)
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == r.usage.prompt_tokens - 1


def test_responses_non_streaming_and_streaming(client):
    r = client.responses.create(model="tiny", input="Hello", max_output_tokens=8, extra_body={"seed": 2})
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text and r.usage.output_tokens == 8
    events = list(client.responses.create(model="tiny", input="Hello", max_output_tokens=8, extra_body={"seed": 2}, stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in types
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == r.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_auth_is_required(tiny_server):
    bad = openai.OpenAI(base_url=tiny_server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.status_code == 401 and "API key" in info.value.message


@pytest.mark.parametrize("kwargs,status,needle", [
    ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "does not exist"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, "unknown role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n=1"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}, 400, "object schema"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "function", "function": {"name": "zz"}}}, 400, "not a declared function"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 5}, 400, "temperature"),
    ({"model": "tiny", "messages": []}, 400, "messages"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x " * 140000}]}, 400, "maximum context length"),
])
def test_error_cases_use_openai_error_bodies(client, kwargs, status, needle):
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**kwargs)
    assert info.value.status_code == status
    body = info.value.body
    assert needle in body["message"] and body["type"]


def test_malformed_json_and_unknown_routes(tiny_server):
    url, _ = tiny_server
    h = {"Authorization": "Bearer sekret", "Content-Type": "application/json"}
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url + "/v1/chat/completions", content=b"[1, 2]", headers=h)
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.get(url + "/v1/nothing", headers=h)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(url + "/v1/responses", json={"model": "tiny", "input": "x", "previous_response_id": "resp_nope"},
                   headers=h)
    assert r.status_code == 404 and "not found" in r.json()["error"]["message"]


def test_twenty_concurrent_streams_all_complete(client):
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"q{i}"}],
                                                    max_tokens=4, stream=True, seed=i)
            parts = [c for c in stream]
            results[i] = parts[-1].choices[0].finish_reason
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert sorted(results) == list(range(20)) and set(results.values()) == {"length"}


def until(condition, timeout: float = 60) -> None:
    """Poll with a deadline (for a broken server; never a timing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_queue_full_is_429(tiny_runtime):
    service = OpenAIService(Engine(load(tiny_runtime), model_id="q"), max_queue=1, current_date="2026-11-23")
    engine = service.engine
    with live_server(service) as url:
        body = {"model": "q", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as running:
            lines = running.iter_lines()  # keep the iterator: dropping it would close the stream
            next(lines)
            until(lambda: engine.active == 1)
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as queued:
                assert queued.status_code == 200 and engine.waiting == 1  # waits in the engine's queue
                r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
                assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
    until(lambda: engine.active == 0 and engine.waiting == 0)  # both streams' clients left: both cancelled


def test_chat_tool_call_round_trip_with_scripted_model(scripted):
    client, model, service = scripted
    model.add_reply(E('<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary '
                      'to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>'))
    msgs = [{"role": "user", "content": "Weather in Oslo?"}]
    r = client.chat.completions.create(model="scripted", messages=msgs, tools=[WEATHER])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    assert choice.message.model_extra.get("reasoning") == "Need weather."
    assert choice.message.model_extra.get("reasoning_content") == "Need weather."
    model.add_reply(E("<|channel|>final<|message|>It is 21 C in Oslo.<|return|>"))
    msgs += [choice.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    r2 = client.chat.completions.create(model="scripted", messages=msgs, tools=[WEATHER])
    assert r2.choices[0].message.content == "It is 21 C in Oslo." and r2.choices[0].finish_reason == "stop"
    # the client echoed the assistant message back; the server restored the model's raw tokens,
    # so the second request prefilled only the tool result and the header
    new = render_tool_result("get_weather", '{"temp_c": 21}') + assistant_header()
    assert r2.usage.prompt_tokens - r2.usage.prompt_tokens_details.cached_tokens == len(new)


def test_chat_tool_call_streaming_deltas(scripted):
    client, model, _ = scripted
    model.add_reply(E('<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Rome"}<|call|>'))
    chunks = list(client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "Rome?"}],
                                                 tools=[WEATHER], stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather" and calls[0].id
    assert "".join(tc.function.arguments or "" for tc in calls) == '{"city": "Rome"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_named_tool_choice_lets_the_model_reason_then_call(scripted):
    client, model, _ = scripted
    model.add_reply(E('<|channel|>analysis<|message|>The user wants Paris.<|end|><|start|>assistant<|channel|>commentary '
                      'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'))
    r = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "Paris"}],
                                       tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"city": "Paris"}'
    assert r.choices[0].message.model_extra["reasoning"] == "The user wants Paris."


def test_stop_strings_cut_the_answer(scripted):
    client, model, _ = scripted
    model.add_reply(E("<|channel|>final<|message|>one two STOP three four<|return|>"))
    r = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "count"}], stop=["STOP"])
    assert r.choices[0].message.content == "one two " and r.choices[0].finish_reason == "stop"


def test_responses_function_call_round_trip_and_previous_response_id(scripted):
    client, model, _ = scripted
    model.add_reply(E('<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Lima"}<|call|>'))
    r1 = client.responses.create(model="scripted", input="Weather in Lima?", tools=[RESP_WEATHER],
                                 instructions="Be brief.", reasoning={"effort": "low"})
    fc = [o for o in r1.output if o.type == "function_call"][0]
    assert fc.name == "get_weather" and json.loads(fc.arguments) == {"city": "Lima"}
    model.add_reply(E("<|channel|>final<|message|>Lima: 19 C.<|return|>"))
    r2 = client.responses.create(model="scripted", previous_response_id=r1.id, tools=[RESP_WEATHER],
                                 instructions="Be brief.", reasoning={"effort": "low"},
                                 input=[{"type": "function_call_output", "call_id": fc.call_id, "output": '{"temp_c": 19}'}])
    assert r2.output_text == "Lima: 19 C." and r2.status == "completed"
    new = render_tool_result("get_weather", '{"temp_c": 19}') + assistant_header()
    assert r2.usage.input_tokens - r2.usage.input_tokens_details.cached_tokens == len(new)
    model.add_reply(E("<|channel|>final<|message|>Lima again.<|return|>"))
    events = list(client.responses.create(model="scripted", previous_response_id=r2.id, input="And now?",
                                          tools=[RESP_WEATHER], instructions="Be brief.",
                                          reasoning={"effort": "low"}, stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output[0].content[0].text == "Lima again."


def test_responses_streaming_function_call_events(scripted):
    client, model, _ = scripted
    model.add_reply(E('<|channel|>analysis<|message|>hmm<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather '
                      '<|constrain|>json<|message|>{"city": "Kyiv"}<|call|>'))
    events = list(client.responses.create(model="scripted", input="Kyiv?", tools=[RESP_WEATHER], stream=True))
    types = [e.type for e in events]
    for t in ("response.reasoning_text.delta", "response.function_call_arguments.delta",
              "response.function_call_arguments.done", "response.output_item.done", "response.completed"):
        assert t in types
    done = [e for e in events if e.type == "response.function_call_arguments.done"][0]
    assert done.arguments == '{"city": "Kyiv"}'


def test_speculation_is_per_request_controllable(tiny_runtime):
    seen: list = []

    class Spy(Engine):
        def submit(self, prompt, **kw):
            seen.append(kw.get("speculate"))
            return super().submit(prompt, **kw)

    service = OpenAIService(Spy(load(tiny_runtime), model_id="tiny"), default_max_tokens=3, current_date="2026-11-23")
    with live_server(service) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        msgs = [{"role": "user", "content": "hi"}]
        c.chat.completions.create(model="tiny", messages=msgs)
        c.chat.completions.create(model="tiny", messages=msgs, extra_body={"speculate": False})
        c.responses.create(model="tiny", input="hi", extra_body={"speculate": True})
    assert seen == [None, False, True]  # None: the server's default (gptoss serve --no-speculate)


def test_streamed_function_call_answered_with_previous_response_id(scripted):
    """The call ids a stream shows are the ids the server stores: answering the streamed call by
    `previous_response_id` + `function_call_output` continues the conversation (it was a 400)."""
    client, model, service = scripted
    model.add_reply(E('<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary '
                      'to=functions.get_weather <|constrain|>json<|message|>{"city": "Lima"}<|call|>'))
    events = list(client.responses.create(model="scripted", input="Weather in Lima?", tools=[RESP_WEATHER],
                                          stream=True))
    streamed = [e.item for e in events if e.type == "response.output_item.done" and e.item.type == "function_call"]
    final = events[-1].response
    assert [i.call_id for i in streamed] == [o.call_id for o in final.output if o.type == "function_call"]
    stored = service.responses.conversation(final.id)[-1]
    assert [c["id"] for c in stored["tool_calls"]] == [streamed[0].call_id]
    model.add_reply(E("<|channel|>final<|message|>Lima: 19 C.<|return|>"))
    events = list(client.responses.create(
        model="scripted", previous_response_id=final.id, tools=[RESP_WEATHER], stream=True,
        input=[{"type": "function_call_output", "call_id": streamed[0].call_id, "output": '{"temp_c": 19}'}]))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "Lima: 19 C."
    # only the tool result and the header were new: the stored turn carried the model's own tokens
    new = render_tool_result("get_weather", '{"temp_c": 19}') + assistant_header()
    usage = events[-1].response.usage
    assert usage.input_tokens - usage.input_tokens_details.cached_tokens == len(new)
