"""`/v1/responses`: a request's generation, the response object or its event stream, stored responses."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Optional

from gptoss_metal.harmony_io import HarmonyIOError, ResponsesStreamMapper, history_message, responses_input_messages
from gptoss_metal.harmony_io.shapes import new_id

from . import sse
from .api_models import APIError, ResponsesRequest
from .openai_api import SERVICE_TIER, Generation, OpenAIService, Outcome, Running, TokenLogprobs
from .response_store import StoredResponse

LOGPROBS_INCLUDE = "message.output_text.logprobs"


def _input_messages(service: OpenAIService, req: ResponsesRequest) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        stored = service.responses.conversation(req.previous_response_id)
        if stored is None:
            raise APIError(404, f"Previous response {req.previous_response_id!r} not found (the server keeps "
                           f"the last {service.responses.capacity} stored responses in memory; a response made "
                           "with store: false is not kept)", param="previous_response_id")
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
    effort = (req.reasoning or {}).get("effort") or req.reasoning_effort  # the reference server's alias
    logprobs = (req.top_logprobs or 0) if LOGPROBS_INCLUDE in (req.include or []) else None
    return service.prepare(messages, tools=req.tools, tool_choice=req.tool_choice, effort=effort,
                           max_tokens=req.max_output_tokens, temperature=req.temperature, top_p=req.top_p,
                           seed=req.seed, speculate=req.speculate, response_format=(req.text or {}).get("format"),
                           format_param="text.format", logprobs=logprobs)


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
        "reasoning": {"effort": reasoning.get("effort") or req.reasoning_effort or "medium",
                      "summary": reasoning.get("summary")},
        "service_tier": SERVICE_TIER, "store": req.store is not False, "temperature": gen.temperature,
        "text": {"format": (req.text or {}).get("format") or {"type": "text"}},
        "tool_choice": req.tool_choice or "auto", "tools": req.tools or [],
        "top_logprobs": req.top_logprobs or 0, "top_p": gen.top_p, "truncation": "disabled", "usage": usage,
        "user": req.user, "metadata": req.metadata or {},
    }


def _input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as items with ids, messages with content parts (what `/input_items` lists)."""
    items = [{"role": "user", "content": req.input}] if isinstance(req.input, str) else req.input
    out = []
    for item in items:
        if item.get("type", "message") == "message":
            content = item.get("content")
            if isinstance(content, str):
                content = [{"type": "input_text" if item.get("role") != "assistant" else "output_text", "text": content}]
            item = dict(item, type="message", content=content, status=item.get("status", "completed"),
                        id=item.get("id") or new_id("msg"))
        else:
            item = dict(item, id=item.get("id") or new_id("item"))
        out.append(item)
    return out


def _store(service: OpenAIService, rid: str, req: ResponsesRequest, gen: Generation, outcome: Outcome,
           response: dict[str, Any]) -> None:
    if req.store is False:  # the client keeps its history itself; nothing here may continue it
        return
    conv = [m for m in gen.messages if m.get("role") != "system"] + [history_message(outcome.turn)]
    service.responses.put(rid, StoredResponse(conv, response, _input_items(req)))


class _Run:
    """One generation's Responses events (whole and streamed alike), token logprobs attached to the text they
    make: each delta, then the text's part and item at the end."""

    def __init__(self) -> None:
        self.mapper = ResponsesStreamMapper()
        self.outcome: Optional[Outcome] = None
        self._held: list = []
        self._by_item: dict[str, list] = {}

    async def events(self, service: OpenAIService, gen: Generation, running: Running,
                     record: Optional[dict]) -> AsyncIterator[dict[str, Any]]:
        async for item in service.run(gen, running, self.mapper, record):
            if isinstance(item, TokenLogprobs):
                self._held = item.entries
            elif isinstance(item, Outcome):
                self.outcome = item
            else:
                self._attach(item)
                yield item

    def close(self) -> list[dict[str, Any]]:
        """The done events of an item left open (a stop-string cut); the output's parts get their logprobs."""
        tail = self.mapper.close()
        for event in tail:
            self._attach(event)
        for item in self.mapper.items:
            if item["type"] == "message":
                for part in item["content"]:
                    part["logprobs"] = self._by_item.get(item["id"], [])
        return tail

    def _attach(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "response.output_text.delta":
            event["logprobs"], self._held = self._held, []
            self._by_item.setdefault(event["item_id"], []).extend(event["logprobs"])
        elif kind == "response.output_text.done":
            event["logprobs"] = self._by_item.get(event["item_id"], [])
        elif kind == "response.content_part.done":
            event["part"]["logprobs"] = self._by_item.get(event["item_id"], [])


async def complete(service: OpenAIService, req: ResponsesRequest, gen: Generation, running: Running,
                   record: Optional[dict] = None) -> dict[str, Any]:
    rid, created_at = new_id("resp"), int(time.time())
    run = _Run()  # the same items as a stream would show
    async for _ in run.events(service, gen, running, record):
        pass
    run.close()
    response = _response_object(rid, created_at, req, gen, "completed", run.mapper.items, run.outcome)
    _store(service, rid, req, gen, run.outcome, response)
    return response


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

    run = _Run()
    yield event({"type": "response.created", "response": snapshot("in_progress", [], None)})
    yield event({"type": "response.in_progress", "response": snapshot("in_progress", [], None)})
    try:
        async for item in run.events(service, gen, running, record):
            yield event(item)
    except APIError as e:  # the generation failed, or the server is shutting down: the stream ends failed
        for tail in run.close():
            yield event(tail)
        failed = snapshot("failed", run.mapper.items, None, {"code": e.code or "server_error", "message": e.message})
        yield event({"type": "response.failed", "response": failed})
        return
    for tail in run.close():  # an item left open by a stop-string cut
        yield event(tail)
    assert run.outcome is not None
    final = snapshot("completed", run.mapper.items, run.outcome)
    _store(service, rid, req, gen, run.outcome, final)
    kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    yield event({"type": kind, "response": final})


# -- stored responses ------------------------------------------------------------------------------


def _stored(service: OpenAIService, rid: str) -> StoredResponse:
    stored = service.responses.get(rid)
    if stored is None:
        raise APIError(404, f"Response {rid!r} not found (the server keeps the last {service.responses.capacity} "
                       "stored responses in memory; a response made with store: false is not kept)",
                       code="not_found", param="response_id")
    return stored


def retrieve(service: OpenAIService, rid: str) -> dict[str, Any]:
    return _stored(service, rid).response


def delete(service: OpenAIService, rid: str) -> dict[str, Any]:
    _stored(service, rid)
    del service.responses[rid]
    return {"id": rid, "object": "response.deleted", "deleted": True}


def input_items(service: OpenAIService, rid: str, limit: int = 20, order: str = "desc",
                after: Optional[str] = None) -> dict[str, Any]:
    """A page of a stored response's input items (OpenAI's list shape)."""
    if order not in ("asc", "desc"):
        raise APIError(400, "order must be 'asc' or 'desc'", param="order")
    if not 1 <= limit <= 100:
        raise APIError(400, "limit must be between 1 and 100", param="limit")
    items = _stored(service, rid).input_items
    items = items if order == "asc" else list(reversed(items))
    if after is not None:
        ids = [i.get("id") for i in items]
        if after not in ids:
            raise APIError(400, f"no input item {after!r} in this response", param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}
