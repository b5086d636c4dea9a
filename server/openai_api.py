"""The OpenAI-compatible service: requests -> harmony prompts -> queued generations -> OpenAI shapes.

Transport-free (no FastAPI here): app.py maps routes and SSE onto these methods.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional, Protocol

from gptoss_metal.harmony_io import (
    AssistantTurn,
    ChatStreamMapper,
    Event,
    ExactHistoryMemory,
    HarmonyIOError,
    PreambleDelta,
    ReasoningDelta,
    ResponsesStreamMapper,
    TextDelta,
    chat_message,
    forced_function_call,
    history_message,
    reasoning_effort,
    render,
    responses_input_messages,
    today,
)
from gptoss_metal.harmony_io.shapes import new_id
from gptoss_metal.metal_runtime import RuntimeUserError

from .api_models import APIError, ChatCompletionRequest, ResponsesRequest
from gptoss_metal.assistant import Engine, TurnStats
from .scheduler import END, Job, QueueFull, Scheduler

DEFAULT_MAX_TOKENS = 4096
SERVICE_TIER = "default"  # what OpenAI reports for a request processed at the standard tier


class EventMapper(Protocol):
    """Maps parser events to an API's stream shapes, accumulating them in its turn."""

    turn: AssistantTurn

    def __call__(self, event: Event) -> list: ...
DISCONNECT_POLL_S = 0.25


@dataclass
class Generation:
    """Everything needed to run one generation, decided before it is queued."""

    messages: list[dict[str, Any]]
    prompt: list[int]
    tools: list[str]  # declared recipients, for the parser
    forced_prefix: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: Optional[int]
    stop: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    turn: AssistantTurn
    stats: TurnStats
    finish_reason: str
    reasoning_tokens: int = 0


class LRU(OrderedDict):
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


class StopWatcher:
    """Cuts the visible text at the first client stop string, holding back possible prefixes."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.hit = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.buffer += text
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.hit = self.buffer[:cut], "", True
            return out
        if len(self.buffer) <= self.hold:
            return ""
        out, self.buffer = self.buffer[: len(self.buffer) - self.hold], self.buffer[len(self.buffer) - self.hold :]
        return out

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


class OpenAIService:
    def __init__(self, engine: Engine, *, model_id: Optional[str] = None, aliases: tuple[str, ...] = (),
                 max_queue: int = 64, exact_history_memory: int = 512, stored_responses: int = 256,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS, current_date: Optional[str] = None):
        self.engine = engine
        self.model_id = model_id or engine.model_id
        self.names = {self.model_id, *aliases}
        self.scheduler = Scheduler(max_queue=max_queue)
        self.exact_history = ExactHistoryMemory(exact_history_memory)
        self.responses = LRU(stored_responses)
        self.default_max_tokens = default_max_tokens
        self.current_date = current_date
        self.created = int(time.time())

    # -- shared ---------------------------------------------------------------------------

    def check_model(self, name: str) -> None:
        if name not in self.names:
            raise APIError(404, f"The model `{name}` does not exist; this server serves {sorted(self.names)}",
                           type="invalid_request_error", code="model_not_found", param="model")

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": n, "object": "model", "created": self.created,
                                            "owned_by": "gptoss-metal"} for n in sorted(self.names)]}

    def prepare(self, messages: list[dict[str, Any]], *, tools: Optional[list[dict]], tool_choice: Any,
                effort: Optional[str], max_tokens: Optional[int], temperature: Optional[float],
                top_p: Optional[float], seed: Optional[int], stop: Any = None) -> Generation:
        try:
            effort = reasoning_effort(effort)
        except HarmonyIOError as e:
            raise APIError(400, str(e), param="reasoning_effort") from None
        forced: list[int] = []
        declared_tools = tools or []
        if tool_choice == "none":
            declared_tools = []
        elif isinstance(tool_choice, dict):
            fn = tool_choice.get("function", tool_choice)
            name = fn.get("name") if isinstance(fn, dict) else None
            names = {(t.get("function", t) or {}).get("name") for t in declared_tools if isinstance(t, dict)}
            if not name or name not in names:
                raise APIError(400, f"tool_choice names function {name!r}, which is not in tools", param="tool_choice")
            forced = forced_function_call(name)
        elif tool_choice == "required":
            raise APIError(400, "tool_choice 'required' is not supported; name a function instead", param="tool_choice")
        elif tool_choice not in (None, "auto"):
            raise APIError(400, f"invalid tool_choice {tool_choice!r}", param="tool_choice")
        try:
            rendered = render(self.exact_history.attach(messages), tools=declared_tools, reasoning_effort=effort,
                              current_date=self.current_date or today())
        except HarmonyIOError as e:
            raise APIError(400, str(e), param="messages") from None
        limit = self.engine.model.args.max_position_embeddings
        room = limit - len(rendered.tokens) - len(forced)
        if room < 1:
            raise APIError(400, f"This model's maximum context length is {limit} tokens; the prompt has "
                           f"{len(rendered.tokens)}.", code="context_length_exceeded", param="messages")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4:
            raise APIError(400, "at most 4 stop sequences", param="stop")
        return Generation(
            messages=messages, prompt=rendered.tokens, tools=rendered.recipients,
            forced_prefix=forced, max_tokens=min(max_tokens or self.default_max_tokens, room),
            temperature=1.0 if temperature is None else temperature, top_p=1.0 if top_p is None else top_p,
            seed=seed, stop=stops,
        )

    def submit(self, gen: Generation) -> Job:
        def work(job: Job) -> None:
            stats = TurnStats()
            stream = self.engine.stream(gen.prompt, max_tokens=gen.max_tokens, temperature=gen.temperature,
                                        top_p=gen.top_p, seed=gen.seed, tools=gen.tools, stats=stats,
                                        forced_prefix=gen.forced_prefix, should_stop=job.cancelled.is_set)
            try:
                for ev in stream:
                    if job.cancelled.is_set():
                        break
                    job.put(ev)
            finally:
                stream.close()  # runs the engine's cleanup: the cache stays consistent
                job.put(stats)

        try:
            return self.scheduler.submit(work)
        except QueueFull as e:
            raise APIError(429, f"The server is busy: {e}. Retry shortly.", type="rate_limit_error",
                           code="queue_full") from None

    async def events(self, job: Job, is_disconnected: Callable[[], Any]) -> AsyncIterator[Any]:
        """Parser events (then the TurnStats) of a job; cancels it if the client goes away."""
        try:
            while True:
                try:
                    item = await job.get(timeout=DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await is_disconnected():
                        return
                    continue
                if item is END:
                    return
                if isinstance(item, RuntimeUserError):
                    raise APIError(400, str(item))
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancel()

    @staticmethod
    def _finish(turn: AssistantTurn, stats: TurnStats, stopped: bool) -> str:
        if turn.tool_calls and turn.finish_reason == "tool_calls":
            return "tool_calls"
        if stopped:
            return "stop"
        return "length" if stats.finish_reason == "length" else "stop"

    async def run(self, gen: Generation, job: Job, is_disconnected: Callable[[], Any],
                  mapper: Optional[EventMapper] = None) -> AsyncIterator[Any]:
        """Follow a submitted generation, yielding what `mapper` maps each event to; ends with an Outcome.

        One turn per generation: the mapper's turn (which mints the tool call ids the client sees) is
        the Outcome's, so the ids streamed, returned, stored and remembered are the same.
        """
        turn = mapper.turn if mapper is not None else AssistantTurn()
        watcher = StopWatcher(gen.stop)
        stats = TurnStats()
        reasoning_tokens = 0

        def emit(ev: Event) -> list:
            if mapper is None:
                turn.add(ev)
                return []
            return mapper(ev)  # adds ev to mapper.turn

        events = self.events(job, is_disconnected)
        try:
            async for item in events:
                if isinstance(item, TurnStats):
                    stats = item
                    continue
                ev = item
                if isinstance(ev, ReasoningDelta):
                    reasoning_tokens += len(ev.tokens)
                if isinstance(ev, (TextDelta, PreambleDelta)) and watcher.stops:
                    ev = type(ev)(watcher.feed(ev.text), ev.tokens)
                    if not ev.text and not watcher.hit:
                        continue
                for out in emit(ev):
                    yield out
                if watcher.hit:
                    break
        finally:
            await events.aclose()  # cancels the job if it is still running
        if watcher.hit:
            stats = await self._final_stats(job, stats)
        else:
            rest = watcher.flush()
            if rest:
                for out in emit(TextDelta(rest)):
                    yield out
        self.exact_history.remember(turn)
        yield Outcome(turn, stats, self._finish(turn, stats, watcher.hit), reasoning_tokens)

    @staticmethod
    async def _final_stats(job: Job, stats: TurnStats) -> TurnStats:
        """After cutting a generation short, wait for the worker's final numbers (it stops within a token)."""
        while True:
            try:
                item = await job.get(timeout=10.0)
            except asyncio.TimeoutError:
                return stats
            if isinstance(item, TurnStats):
                return item
            if item is END:
                return stats

    @staticmethod
    def usage_chat(o: Outcome) -> dict[str, Any]:
        return {"prompt_tokens": o.stats.prompt_tokens, "completion_tokens": o.stats.generated_tokens,
                "total_tokens": o.stats.prompt_tokens + o.stats.generated_tokens,
                "prompt_tokens_details": {"cached_tokens": o.stats.reused_tokens},
                "completion_tokens_details": {"reasoning_tokens": o.reasoning_tokens}}

    # -- chat completions -------------------------------------------------------------------

    def chat_generation(self, req: ChatCompletionRequest) -> Generation:
        self.check_model(req.model)
        if req.n != 1:
            raise APIError(400, "only n=1 is supported", param="n")
        if req.logprobs:
            raise APIError(400, "logprobs are not supported", param="logprobs")
        if req.response_format and req.response_format.get("type") not in (None, "text"):
            raise APIError(400, f"response_format {req.response_format.get('type')!r} is not supported",
                           param="response_format")
        return self.prepare(req.messages, tools=req.tools, tool_choice=req.tool_choice, effort=req.reasoning_effort,
                            max_tokens=req.max_completion_tokens or req.max_tokens, temperature=req.temperature,
                            top_p=req.top_p, seed=req.seed, stop=req.stop)

    async def complete(self, gen: Generation, is_disconnected, mapper: Optional[EventMapper] = None) -> Outcome:
        """Run a generation to its end (non-streaming requests)."""
        outcome = None
        async for item in self.run(gen, self.submit(gen), is_disconnected, mapper):
            if isinstance(item, Outcome):
                outcome = item
        assert outcome is not None, "run() always ends with an Outcome"
        return outcome

    async def chat(self, req: ChatCompletionRequest, is_disconnected) -> dict[str, Any]:
        created = int(time.time())
        outcome = await self.complete(self.chat_generation(req), is_disconnected)
        msg = chat_message(outcome.turn)
        return {
            "id": "chatcmpl-" + new_id("x")[2:], "object": "chat.completion", "created": created,
            "model": req.model, "service_tier": SERVICE_TIER, "system_fingerprint": None,
            "choices": [{"index": 0, "message": msg, "finish_reason": outcome.finish_reason, "logprobs": None}],
            "usage": self.usage_chat(outcome),
        }

    async def chat_stream(self, req: ChatCompletionRequest, gen: Generation, job: Job,
                          is_disconnected) -> AsyncIterator[str]:
        cid, created = "chatcmpl-" + new_id("x")[2:], int(time.time())
        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: Optional[str] = None) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "service_tier": SERVICE_TIER, "system_fingerprint": None,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            return f"data: {json.dumps(body)}\n\n"

        mapper = ChatStreamMapper()
        yield chunk({"role": "assistant", "content": ""})
        async for item in self.run(gen, job, is_disconnected, mapper):
            if isinstance(item, Outcome):
                yield chunk({}, item.finish_reason)
                if include_usage:
                    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                            "service_tier": SERVICE_TIER, "system_fingerprint": None, "choices": [],
                            "usage": self.usage_chat(item)}
                    yield f"data: {json.dumps(body)}\n\n"
            else:
                yield chunk(item)
        yield "data: [DONE]\n\n"

    # -- responses --------------------------------------------------------------------------

    def _input_messages(self, req: ResponsesRequest) -> list[dict[str, Any]]:
        history: list[dict[str, Any]] = []
        if req.previous_response_id is not None:
            stored = self.responses.get(req.previous_response_id)
            if stored is None:
                raise APIError(404, f"Previous response {req.previous_response_id!r} not found (the server keeps "
                               f"the last {self.responses.capacity} in memory)", param="previous_response_id")
            history = stored
        items = [{"role": "user", "content": req.input}] if isinstance(req.input, str) else req.input
        try:
            return responses_input_messages(items, history)
        except HarmonyIOError as e:
            raise APIError(400, str(e), param="input") from None

    def responses_generation(self, req: ResponsesRequest) -> Generation:
        self.check_model(req.model)
        messages = self._input_messages(req)
        if req.instructions:
            messages = [{"role": "system", "content": req.instructions}] + messages
        effort = (req.reasoning or {}).get("effort")
        return self.prepare(messages, tools=req.tools, tool_choice=req.tool_choice, effort=effort,
                            max_tokens=req.max_output_tokens, temperature=req.temperature, top_p=req.top_p,
                            seed=req.seed)

    def _response_object(self, rid: str, created_at: int, req: ResponsesRequest, gen: Generation, status: str,
                         output: list[dict[str, Any]], outcome: Optional[Outcome]) -> dict[str, Any]:
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
            "error": None, "incomplete_details": incomplete, "instructions": req.instructions,
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

    def _store(self, rid: str, gen: Generation, outcome: Outcome) -> None:
        conv = [m for m in gen.messages if m.get("role") != "system"] + [history_message(outcome.turn)]
        self.responses.put(rid, conv)

    async def respond(self, req: ResponsesRequest, is_disconnected) -> dict[str, Any]:
        rid, created_at = new_id("resp"), int(time.time())
        gen = self.responses_generation(req)
        mapper = ResponsesStreamMapper()  # the same items as a stream would show
        outcome = await self.complete(gen, is_disconnected, mapper)
        mapper.close()
        self._store(rid, gen, outcome)
        return self._response_object(rid, created_at, req, gen, "completed", mapper.items, outcome)

    async def respond_stream(self, req: ResponsesRequest, gen: Generation, job: Job,
                             is_disconnected) -> AsyncIterator[str]:
        rid, created_at = new_id("resp"), int(time.time())
        seq = 0

        def sse(event: dict[str, Any]) -> str:
            nonlocal seq
            event = dict(event, sequence_number=seq)
            seq += 1
            return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"

        def snapshot(status: str, output: list[dict[str, Any]], outcome: Optional[Outcome]) -> dict[str, Any]:
            return self._response_object(rid, created_at, req, gen, status, output, outcome)

        mapper = ResponsesStreamMapper()
        yield sse({"type": "response.created", "response": snapshot("in_progress", [], None)})
        yield sse({"type": "response.in_progress", "response": snapshot("in_progress", [], None)})
        outcome = None
        async for item in self.run(gen, job, is_disconnected, mapper):
            if isinstance(item, Outcome):
                outcome = item
            else:
                yield sse(item)
        for tail in mapper.close():  # an item left open by a stop-string cut
            yield sse(tail)
        assert outcome is not None
        self._store(rid, gen, outcome)
        final = snapshot("completed", mapper.items, outcome)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield sse({"type": kind, "response": final})
