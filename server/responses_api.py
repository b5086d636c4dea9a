"""`/v1/responses`: a request's generation, the response object or its event stream, stored responses."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Optional

from gptoss_metal.harmony_io import HarmonyIOError, ResponsesStreamMapper, history_message, responses_input_messages
from gptoss_metal.harmony_io.shapes import new_id

from . import sse
from .api_models import APIError, ResponsesRequest
from .openai_api import SERVICE_TIER, Generation, OpenAIService, Outcome, Running


def _input_messages(service: OpenAIService, req: ResponsesRequest) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        stored = service.responses.get(req.previous_response_id)
        if stored is None:
            raise APIError(404, f"Previous response {req.previous_response_id!r} not found (the server keeps "
                           f"the last {service.responses.capacity} in memory)", param="previous_response_id")
        history = stored
    items = [{"role": "user", "content": req.input}] if isinstance(req.input, str) else req.input
    try:
        return responses_input_messages(items, history)
    except HarmonyIOError as e:
        raise APIError(400, str(e), param="input") from None


def generation(service: OpenAIService, req: ResponsesRequest) -> Generation:
    service.check_model(req.model)
    messages = _input_messages(service, req)
    if req.instructions:
        messages = [{"role": "system", "content": req.instructions}] + messages
    effort = (req.reasoning or {}).get("effort")
    return service.prepare(messages, tools=req.tools, tool_choice=req.tool_choice, effort=effort,
                           max_tokens=req.max_output_tokens, temperature=req.temperature, top_p=req.top_p,
                           seed=req.seed, speculate=req.speculate)


def _response_object(rid: str, created_at: int, req: ResponsesRequest, gen: Generation, status: str,
                     output: list[dict[str, Any]], outcome: Optional[Outcome],
                     error: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A Responses `response` object: the fields OpenAI's own objects carry, echoing the request's
    settings as they took effect (sampling defaults included)."""
    incomplete = None
    if outcome is not None and outcome.finish_reason == "length":
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    usage = None
    if outcome is not None:
        s = outcome.stats
        usage = {"input_tokens": s.prompt_tokens, "output_tokens": s.generated_tokens,
                 "total_tokens": s.prompt_tokens + s.generated_tokens,
                 "input_tokens_details": {"cached_tokens": s.reused_tokens, "cache_write_tokens": 0},
                 "output_tokens_details": {"reasoning_tokens": outcome.reasoning_tokens}}
    reasoning = req.reasoning or {}
    return {
        "id": rid, "object": "response", "created_at": created_at, "status": status, "background": False,
        "error": error, "incomplete_details": incomplete, "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens, "max_tool_calls": req.max_tool_calls,
        "model": req.model, "output": output,
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": req.previous_response_id,
        "prompt_cache_key": req.prompt_cache_key, "safety_identifier": req.safety_identifier,
        "reasoning": {"effort": reasoning.get("effort", "medium"), "summary": reasoning.get("summary")},
        "service_tier": SERVICE_TIER, "store": req.store is not False, "temperature": gen.temperature,
        "text": {"format": {"type": "text"}}, "tool_choice": req.tool_choice or "auto", "tools": req.tools or [],
        "top_logprobs": 0, "top_p": gen.top_p, "truncation": "disabled", "usage": usage,
        "user": req.user, "metadata": req.metadata or {},
    }


def _store(service: OpenAIService, rid: str, gen: Generation, outcome: Outcome) -> None:
    conv = [m for m in gen.messages if m.get("role") != "system"] + [history_message(outcome.turn)]
    service.responses.put(rid, conv)


async def complete(service: OpenAIService, req: ResponsesRequest, gen: Generation, running: Running,
                   record: Optional[dict] = None) -> dict[str, Any]:
    rid, created_at = new_id("resp"), int(time.time())
    mapper = ResponsesStreamMapper()  # the same items as a stream would show
    outcome = await service.complete(gen, running, mapper, record)
    mapper.close()
    _store(service, rid, gen, outcome)
    return _response_object(rid, created_at, req, gen, "completed", mapper.items, outcome)


async def stream(service: OpenAIService, req: ResponsesRequest, gen: Generation, running: Running,
                 record: Optional[dict] = None) -> AsyncIterator[str]:
    rid, created_at = new_id("resp"), int(time.time())
    seq = 0

    def event(payload: dict[str, Any]) -> str:
        nonlocal seq
        payload = dict(payload, sequence_number=seq)
        seq += 1
        return sse.typed(payload)

    def snapshot(status: str, output: list[dict[str, Any]], outcome: Optional[Outcome],
                 error: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        return _response_object(rid, created_at, req, gen, status, output, outcome, error)

    mapper = ResponsesStreamMapper()
    yield event({"type": "response.created", "response": snapshot("in_progress", [], None)})
    yield event({"type": "response.in_progress", "response": snapshot("in_progress", [], None)})
    outcome = None
    try:
        async for item in service.run(gen, running, mapper, record):
            if isinstance(item, Outcome):
                outcome = item
            else:
                yield event(item)
    except APIError as e:  # the generation failed, or the server is shutting down: the stream ends failed
        for tail in mapper.close():
            yield event(tail)
        failed = snapshot("failed", mapper.items, None, {"code": e.code or "server_error", "message": e.message})
        yield event({"type": "response.failed", "response": failed})
        return
    for tail in mapper.close():  # an item left open by a stop-string cut
        yield event(tail)
    assert outcome is not None
    _store(service, rid, gen, outcome)
    final = snapshot("completed", mapper.items, outcome)
    kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    yield event({"type": kind, "response": final})
