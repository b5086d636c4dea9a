"""`/v1/chat/completions`: a request's generation, the whole answer, or its stream of chunks."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Optional

from gptoss_metal.harmony_io import ChatStreamMapper, chat_message
from gptoss_metal.harmony_io.shapes import new_id

from . import sse
from .api_models import APIError, ChatCompletionRequest
from .openai_api import SERVICE_TIER, Generation, OpenAIService, Outcome, Running, usage_chat


def generation(service: OpenAIService, req: ChatCompletionRequest) -> Generation:
    service.check_model(req.model)
    if req.n != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    if req.logprobs:
        raise APIError(400, "logprobs are not supported", param="logprobs")
    if req.response_format and req.response_format.get("type") not in (None, "text"):
        raise APIError(400, f"response_format {req.response_format.get('type')!r} is not supported",
                       param="response_format")
    return service.prepare(req.messages, tools=req.tools, tool_choice=req.tool_choice, effort=req.reasoning_effort,
                           max_tokens=req.max_completion_tokens or req.max_tokens, temperature=req.temperature,
                           top_p=req.top_p, seed=req.seed, stop=req.stop, speculate=req.speculate)


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
                     "logprobs": None}],
        "usage": usage_chat(outcome),
    }


async def stream(service: OpenAIService, req: ChatCompletionRequest, gen: Generation, running: Running,
                 record: Optional[dict] = None) -> AsyncIterator[str]:
    cid, created = _completion_id(), int(time.time())
    include_usage = bool((req.stream_options or {}).get("include_usage"))

    def chunk(choices: list, **extra: Any) -> str:
        return sse.data({"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                         "service_tier": SERVICE_TIER, "system_fingerprint": None, "choices": choices, **extra})

    def delta(d: dict[str, Any], finish: Optional[str] = None) -> str:
        return chunk([{"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}])

    yield delta({"role": "assistant", "content": ""})
    try:
        async for item in service.run(gen, running, ChatStreamMapper(), record):
            if isinstance(item, Outcome):
                yield delta({}, item.finish_reason)
                if include_usage:
                    yield chunk([], usage=usage_chat(item))
            else:
                yield delta(item)
    except APIError as e:  # the generation failed, or the server is shutting down: say so, then end
        yield sse.data(e.body())
    yield sse.DONE
