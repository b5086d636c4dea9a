"""What clients we did not write ask of the server (issue 27), through the unmodified `openai` client:
structured outputs (`parse` with a pydantic model on both endpoints), strict functions, tool_choice,
logprobs, stored responses, namespace and hosted tools, calls from the analysis channel, model names,
and CORS for the JS SDK's headers.
"""

from __future__ import annotations

import json
import httpx
import openai
import pytest
from pydantic import BaseModel

from doubles import ScriptedModel, StopHungryModel
from gptoss_metal.assistant import Engine
from gptoss_metal.harmony_io import encoding
from gptoss_metal.metal_runtime import load
from gptoss_metal.server.openai_api import OpenAIService
from serving import live_server

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}
CHAT_WEATHER = {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}


def E(s: str) -> list[int]:
    return encoding().encode(s, allowed_special="all")


class City(BaseModel):
    name: str
    population: int
    coastal: bool


# what a model that wants to stop at once would pick next, once <|return|> is forbidden: whatever closes
# JSON soonest, and in a header the final channel
CLOSERS = [t for s in ('"', "}", "]", "0", "false", ",", ":", "<|channel|>", "final", "<|message|>") for t in E(s)]


def client(model, **service) -> OpenAIService:
    return OpenAIService(Engine(model, model_id="m"), current_date="2026-11-23", **service)


@pytest.fixture
def hungry():
    service = client(StopHungryModel(CLOSERS))
    with live_server(service) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0), service


@pytest.fixture
def scripted():
    model = ScriptedModel()
    service = client(model)
    with live_server(service) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0), model, url


# -- structured outputs ------------------------------------------------------------------------------


def test_chat_parse_with_a_pydantic_model_on_a_model_that_would_end_at_once(hungry):
    c, _ = hungry
    r = c.chat.completions.parse(model="m", messages=[{"role": "user", "content": "A city?"}], response_format=City,
                                 temperature=0, max_tokens=200)
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and r.choices[0].finish_reason == "stop"
    assert City.model_validate_json(r.choices[0].message.content) == city


def test_responses_parse_with_a_pydantic_model_streamed_and_not(hungry):
    c, _ = hungry
    r = c.responses.parse(model="m", input="A city?", text_format=City, temperature=0, max_output_tokens=200)
    assert isinstance(r.output_parsed, City) and r.status == "completed"
    with c.responses.stream(model="m", input="A city?", text_format=City, temperature=0,
                            max_output_tokens=200) as stream:
        final = stream.get_final_response()
    assert final.output_parsed == r.output_parsed
    assert final.text.format.type == "json_schema"  # echoed as it took effect


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_json_object_on_chat(hungry, stream):
    c, _ = hungry
    kwargs = dict(model="m", messages=[{"role": "user", "content": "JSON please"}], temperature=0, max_tokens=100,
                  response_format={"type": "json_object"})
    if stream:
        text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kwargs)
                       if ch.choices)
    else:
        text = c.chat.completions.create(**kwargs).choices[0].message.content
    assert isinstance(json.loads(text), dict)


def test_a_strict_function_and_tool_choice_required_make_a_valid_call(hungry):
    c, _ = hungry
    r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Weather?"}], temperature=0,
                                  tools=[dict(CHAT_WEATHER, function=dict(CHAT_WEATHER["function"], strict=True))],
                                  tool_choice="required", max_tokens=200)
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}


# -- logprobs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_runtime):
    service = OpenAIService(Engine(load(tiny_runtime, dtype="float32"), model_id="tiny"), current_date="2026-11-23")
    with live_server(service) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0), url


def test_chat_logprobs_whole_and_streamed_agree_and_spell_the_content(tiny):
    c, _ = tiny
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=24, seed=4, logprobs=True,
                  top_logprobs=3)
    whole = c.chat.completions.create(**kwargs)
    entries = whole.choices[0].logprobs.content if whole.choices[0].logprobs else []
    assert b"".join(bytes(e.bytes) for e in entries).decode("utf-8", "replace") == (whole.choices[0].message.content or "")
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert e.logprob <= e.top_logprobs[0].logprob + 1e-6
    streamed = [lp for ch in c.chat.completions.create(stream=True, **kwargs) if ch.choices and ch.choices[0].logprobs
                for lp in ch.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 5)) for e in streamed] == [(e.token, round(e.logprob, 5)) for e in entries]


def test_responses_logprobs_on_request_only(scripted):
    c, model, _ = scripted
    model.add_reply(E("<|channel|>final<|message|>Hello there.<|return|>"))
    plain = c.responses.create(model="m", input="Hi")
    assert plain.output[-1].content[0].logprobs == []
    model.add_reply(E("<|channel|>final<|message|>Hello there.<|return|>"))
    r = c.responses.create(model="m", input="Hi", include=["message.output_text.logprobs"], top_logprobs=2)
    part = r.output[-1].content[0]
    assert "".join(lp.token for lp in part.logprobs) == part.text == "Hello there."
    assert all(lp.logprob == pytest.approx(0.0, abs=1e-6) and len(lp.top_logprobs) == 2 for lp in part.logprobs)


# -- stored responses ------------------------------------------------------------------------------------


def test_store_false_is_honoured_and_stored_responses_can_be_read_and_deleted(scripted):
    c, model, _ = scripted
    for _ in range(3):
        model.add_reply(E("<|channel|>final<|message|>Stored.<|return|>"))
    kept = c.responses.create(model="m", input=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}])
    assert c.responses.retrieve(kept.id).output_text == "Stored."
    items = c.responses.input_items.list(kept.id, order="asc")
    assert [i.content[0].text for i in items.data] == ["one", "two"]
    unkept = c.responses.create(model="m", input="x", store=False)
    assert unkept.store is False
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(unkept.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="m", input="more", previous_response_id=unkept.id)
    c.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(kept.id)


# -- tools the way harmony has them ------------------------------------------------------------------------

NAMESPACE = {"type": "namespace", "name": "multi_agent_v1", "description": "Tools for spawning sub-agents.",
             "tools": [{"type": "function", "name": "spawn_agent", "description": "Spawn one.",
                        "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}}]}


def test_a_namespace_tool_is_a_harmony_namespace_and_its_call_comes_back_with_its_namespace(scripted):
    c, model, _ = scripted
    model.add_reply(E('<|channel|>commentary to=multi_agent_v1.spawn_agent <|constrain|>json<|message|>'
                      '{"task": "lint"}<|call|>'))
    r = c.responses.create(model="m", input="Lint it.", tools=[NAMESPACE, {"type": "web_search"}])
    (call,) = r.output
    assert (call.type, call.namespace, call.name, json.loads(call.arguments)) == (
        "function_call", "multi_agent_v1", "spawn_agent", {"task": "lint"})
    model.add_reply(E("<|channel|>final<|message|>Spawned.<|return|>"))
    r2 = c.responses.create(model="m", tools=[NAMESPACE], input=[
        {"role": "user", "content": "Lint it."}, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "agent 7"}])
    assert r2.output_text == "Spawned."
    # only the tool result and the next header were new: the call was found again token for token
    new = E("<|start|>multi_agent_v1.spawn_agent to=assistant<|channel|>commentary<|message|>agent 7<|end|>"
            "<|start|>assistant")
    assert r2.usage.input_tokens - r2.usage.input_tokens_details.cached_tokens == len(new)


def test_the_namespace_renders_as_harmony_declares_it():
    from gptoss_metal.harmony_io import render_prompt

    text = encoding().decode(render_prompt([{"role": "user", "content": "x"}], tools=[NAMESPACE]))
    assert "## multi_agent_v1\n\n// Tools for spawning sub-agents.\nnamespace multi_agent_v1 {" in text
    assert "type spawn_agent = (_: {\ntask?: string,\n}) => any;" in text and "namespace functions" not in text


CALLS = {
    "analysis channel": '<|channel|>analysis to=functions.get_weather code<|message|>{"city": "Oslo"}<|call|>',
    "commentary channel": '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>'
                          '{"city": "Oslo"}<|call|>',
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("script", sorted(CALLS))
def test_a_call_is_a_call_on_every_endpoint_whatever_its_channel(scripted, script, stream):
    c, model, _ = scripted
    model.add_reply(E(CALLS[script]))
    kwargs = dict(model="m", messages=[{"role": "user", "content": "Oslo?"}], tools=[CHAT_WEATHER])
    if stream:
        chunks = list(c.chat.completions.create(stream=True, **kwargs))
        calls = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
        name, args = calls[0].function.name, "".join(tc.function.arguments or "" for tc in calls)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason][0]
    else:
        choice = c.chat.completions.create(**kwargs).choices[0]
        name, args, finish = choice.message.tool_calls[0].function.name, choice.message.tool_calls[0].function.arguments, \
            choice.finish_reason
    assert (name, json.loads(args), finish) == ("get_weather", {"city": "Oslo"}, "tool_calls")
    model.add_reply(E(CALLS[script]))
    if stream:
        events = list(c.responses.create(model="m", input="Oslo?", tools=[WEATHER], stream=True))
        output = events[-1].response.output
    else:
        output = c.responses.create(model="m", input="Oslo?", tools=[WEATHER]).output
    (call,) = [o for o in output if o.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_call_to_an_undeclared_tool_never_reaches_the_client_as_a_call(scripted, stream):
    c, model, _ = scripted
    reply = E("<|channel|>analysis to=python code<|message|>import os<|call|>")
    model.add_reply(reply)
    kwargs = dict(model="m", messages=[{"role": "user", "content": "x"}], tools=[CHAT_WEATHER])
    if stream:
        chunks = list(c.chat.completions.create(stream=True, **kwargs))
        assert not any(ch.choices[0].delta.tool_calls for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason][0]
    else:
        choice = c.chat.completions.create(**kwargs).choices[0]
        assert not choice.message.tool_calls
        finish = choice.finish_reason
    assert finish == "stop"
    model.add_reply(reply)
    r = c.responses.create(model="m", input="x", tools=[WEATHER], stream=False)
    assert [o.type for o in r.output] == []


# -- names and browsers ---------------------------------------------------------------------------------------


def test_an_unknown_model_is_404_and_aliases_and_the_family_name_answer(tiny_runtime):
    service = OpenAIService(Engine(ScriptedModel(), model_id="m"), aliases=("mine",), current_date="2026-11-23")
    with live_server(service) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.NotFoundError) as e:
            c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        assert e.value.body["code"] == "model_not_found"
        assert {m.id for m in c.models.list().data} == {"m", "mine"}
    from gptoss_metal.converters.presets import PRESETS

    assert (PRESETS["20b"].family, PRESETS["120b"].family, PRESETS["tiny"].family) == (
        "gpt-oss-20b", "gpt-oss-120b", None)
    model = ScriptedModel()
    model.args.family = "gpt-oss-20b"
    assert OpenAIService(Engine(model, model_id="folder")).names == {"folder", "gpt-oss-20b"}


def test_an_allowed_origin_may_send_the_js_sdks_headers(tmp_path):
    from gptoss_metal.server.assembly import assemble

    server = assemble(Engine(ScriptedModel(), model_id="m"), data_dir=tmp_path, allow_origins=["http://localhost:3000"])
    with live_server(app=server.app) as url:
        pre = httpx.options(url + "/v1/chat/completions", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, x-stainless-retry-count"})
    server.close()
    allowed = {h.strip() for h in pre.headers["access-control-allow-headers"].split(",")}
    assert pre.status_code == 204 and {"x-stainless-os", "x-stainless-retry-count", "authorization"} <= allowed
