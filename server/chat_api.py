"""`/v1/chat/completions`: a request's generation, the whole answer, or its stream of chunks."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Optional

from gptoss_metal.harmony_io import ChatStreamMapper, chat_message
from gptoss_metal.harmony_io.shapes import new_id

from . import sse
from .api_models import APIError, ChatCompletionRequest
from .openai_api import SERVICE_TIER, Generation, OpenAIService, Outcome, Running, TokenLogprobs, usage_chat


def generation(service: OpenAIService, req: ChatCompletionRequest) -> Generation:
    service.check_model(req.model)
    if req.n != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    return service.prepare(req.messages, tools=req.tools, tool_choice=req.tool_choice, effort=req.reasoning_effort,
                           max_tokens=req.max_completion_tokens or req.max_tokens, temperature=req.temperature,
                           top_p=req.top_p, seed=req.seed, stop=req.stop, speculate=req.speculate,
                           response_format=req.response_format,
                           logprobs=(req.top_logprobs or 0) if req.logprobs else None)


def _logprobs(gen: Generation, entries: list) -> Optional[dict[str, Any]]:
    return {"content": entries, "refusal": None} if gen.logprobs is not None else None


def _completion_id() -> str:
    return "chatcmpl-" + new_id("x")[2:]


async def complete(service: OpenAIService, req: ChatCompletionRequest, gen: Generation, running: Running,
                   record: Optional[dict] = None) -> dict[str, Any]:
    created = int(time.time())
    outcome = await service.complete(gen, running, record=record)
    return {
        "id": _completion_id(), "object": "chat.completion", "created": created,
        "model": req.model, "service_tier": SERVICE_TIER, "system_fingerprint": None,
        "choices": [{"index": 0, "message": chat_message(outcome.turn), "finish_reason": outcome.finish_reason,
                     "logprobs": _logprobs(gen, outcome.logprobs)}],
        "usage": usage_chat(outcome),
    }


async def stream(service: OpenAIService, req: ChatCompletionRequest, gen: Generation, running: Running,
                 record: Optional[dict] = None) -> AsyncIterator[str]:
    cid, created = _completion_id(), int(time.time())
    include_usage = bool((req.stream_options or {}).get("include_usage"))

    def chunk(choices: list, **extra: Any) -> str:
        return sse.data({"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                         "service_tier": SERVICE_TIER, "system_fingerprint": None, "choices": choices, **extra})

    def delta(d: dict[str, Any], finish: Optional[str] = None, logprobs: Optional[dict] = None) -> str:
        return chunk([{"index": 0, "delta": d, "finish_reason": finish, "logprobs": logprobs}])

    yield delta({"role": "assistant", "content": ""})
    held: list = []  # the logprobs of the next content delta
    try:
        async for item in service.run(gen, running, ChatStreamMapper(), record):
            if isinstance(item, TokenLogprobs):
                held = item.entries
            elif isinstance(item, Outcome):
                yield delta({}, item.finish_reason)
                if include_usage:
                    yield chunk([], usage=usage_chat(item))
            else:
                shown, held = (held if "content" in item else []), ([] if "content" in item else held)
                yield delta(item, logprobs=_logprobs(gen, shown) if shown else None)
    except APIError as e:  # the generation failed, or the server is shutting down: say so, then end
        yield sse.data(e.body())
    yield sse.DONE
