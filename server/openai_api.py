"""The OpenAI-compatible service, shared by both endpoints: requests -> harmony prompts -> generations.

Transport-free (no FastAPI here). A request is `prepare`d into a `Generation` (prompt tokens, budget,
sampling) before anything is queued, so every refusal is a clean 4xx; `start` submits it to the engine,
whose decode thread pushes its events into this event loop (bridge.Inbox); `run` maps them to an
endpoint's shapes and ends with one `Outcome`. The endpoints' own shapes live in chat_api.py and
responses_api.py.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional, Protocol

from gptoss_metal.assistant import Engine, Finished
from gptoss_metal.assistant.engine import Logprobs
from gptoss_metal.harmony_io import (
    AssistantTurn,
    Event,
    ExactHistoryMemory,
    HarmonyIOError,
    PreambleDelta,
    ReasoningDelta,
    TextDelta,
    parse_tools,
    reasoning_effort,
    render,
    today,
)
from gptoss_metal.harmony_io.constraint import HarmonyConstraint, output_constraint
from gptoss_metal.harmony_io.vocab import token_bytes
from gptoss_metal.metal_runtime import GenerationStats, RuntimeUserError
from gptoss_metal.metal_runtime.serving import EngineBusy, EngineClosed, Handle

from .api_models import APIError
from .bridge import Inbox
from .response_store import ResponseStore
from .tool_policy import usable_tools

DEFAULT_MAX_TOKENS = 4096
SERVICE_TIER = "default"  # what OpenAI reports for a request processed at the standard tier


class EventMapper(Protocol):
    """Maps parser events to an API's stream shapes (ChatStreamMapper, ResponsesStreamMapper),
    accumulating them in its turn."""

    turn: AssistantTurn

    def __call__(self, event: Event) -> list: ...


@dataclass
class Generation:
    """Everything needed to run one generation, decided before it is queued."""

    messages: list[dict[str, Any]]
    prompt: list[int]
    tools: list[str]  # declared recipients, for the parser
    max_tokens: int
    temperature: float
    top_p: float
    seed: Optional[int]
    stop: list[str] = field(default_factory=list)
    speculate: Optional[bool] = None
    constraint: Optional[HarmonyConstraint] = None  # structured outputs, tool_choice required / named
    logprobs: Optional[int] = None  # top alternatives per token (None: no logprobs)
    ignored_tools: list[str] = field(default_factory=list)  # hosted tool types left out (tool_policy.py)


@dataclass
class Outcome:
    """One generation as an endpoint reports it: the assistant's turn, its figures, why it ended."""

    turn: AssistantTurn
    stats: GenerationStats
    finish_reason: str
    reasoning_tokens: int = 0
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # the visible text's tokens, when asked for


@dataclass
class TokenLogprobs:
    """Yielded by `run` just before the mapped output of the text these tokens make (streams attach it)."""

    entries: list[dict[str, Any]]


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


class Running:
    """A submitted generation as the route holds it: its events arrive in this loop, `cancel()` stops it."""

    def __init__(self, handle: Handle, inbox: Inbox):
        self.handle, self.inbox = handle, inbox
        self.finished: Optional[Finished] = None

    def cancel(self) -> None:
        self.handle.cancel()

    async def events(self) -> AsyncIterator[Event]:
        """Parser events until the end (then `finished` holds the figures); a cancelled generation ends
        within one step of the decode thread."""
        while self.finished is None:
            item = await self.inbox.get()
            if isinstance(item, Finished):
                self.finished = item
            else:
                yield item


class OpenAIService:
    def __init__(self, engine: Engine, *, model_id: Optional[str] = None, aliases: tuple[str, ...] = (),
                 max_queue: Optional[int] = None, exact_history_memory: int = 512, stored_responses: int = 256,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS, current_date: Optional[str] = None):
        self.engine = engine
        if max_queue is not None:
            engine.core.max_queue = max_queue  # admission is the engine's: the page's turns wait there too
        self.model_id = model_id or engine.model_id
        family = getattr(engine.model.args, "family", None)  # a released model also answers to its name
        self.names = {self.model_id, *aliases} | ({family} if family else set())
        self.exact_history = ExactHistoryMemory(exact_history_memory)
        self.responses = ResponseStore(stored_responses)
        self.default_max_tokens = default_max_tokens
        self.current_date = current_date
        self.created = int(time.time())
        self.shutting_down = False

    # -- models -----------------------------------------------------------------------------

    def check_model(self, name: str) -> None:
        if name not in self.names:
            raise APIError(404, f"The model `{name}` does not exist; this server serves {sorted(self.names)}",
                           type="invalid_request_error", code="model_not_found", param="model")

    def model_object(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "gptoss-metal"}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_object(n) for n in sorted(self.names)]}

    def health(self) -> dict[str, Any]:
        return {"status": "shutting_down" if self.shutting_down else "ok", "model": self.model_id,
                "queued": self.engine.waiting, "busy": self.engine.active > 0}

    # -- one generation ---------------------------------------------------------------------

    def prepare(self, messages: list[dict[str, Any]], *, tools: Optional[list[dict]], tool_choice: Any,
                effort: Optional[str], max_tokens: Optional[int], temperature: Optional[float],
                top_p: Optional[float], seed: Optional[int], stop: Any = None, speculate: Optional[bool] = None,
                response_format: Any = None, format_param: str = "response_format",
                logprobs: Optional[int] = None) -> Generation:
        """A request's generation, every refusal a 4xx naming its parameter. Runs off the event loop (it
        tokenizes the prompt and may compile a grammar)."""
        try:
            effort = reasoning_effort(effort)
        except HarmonyIOError as e:
            raise APIError(400, str(e), param="reasoning_effort") from None
        declared, ignored_tools = usable_tools(tools)
        if tool_choice == "none":
            declared = []
        try:
            parse_tools(declared)
        except HarmonyIOError as e:
            raise APIError(400, str(e), param="tools") from None
        try:
            rendered = render(self.exact_history.attach(messages), tools=declared, reasoning_effort=effort,
                              current_date=self.current_date or today())
        except HarmonyIOError as e:
            raise APIError(400, str(e), param="messages") from None
        room = self.engine.room(rendered.tokens)
        if room < 1:
            raise APIError(400, f"This model's maximum context length is {self.engine.context_length} tokens; the "
                           f"prompt has {len(rendered.tokens)}.", code="context_length_exceeded", param="messages")
        budget = min(max_tokens or self.default_max_tokens, room)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4:
            raise APIError(400, "at most 4 stop sequences", param="stop")
        return Generation(
            messages=messages, prompt=rendered.tokens, tools=rendered.recipients, max_tokens=budget,
            temperature=1.0 if temperature is None else temperature, top_p=1.0 if top_p is None else top_p,
            seed=seed, stop=stops, speculate=speculate,
            constraint=self._constraint(response_format, format_param, declared, tool_choice, budget),
            logprobs=logprobs, ignored_tools=ignored_tools,
        )

    @staticmethod
    def _constraint(response_format: Any, format_param: str, tools: list[dict], tool_choice: Any,
                    budget: int) -> Optional[HarmonyConstraint]:
        """Structured outputs, strict functions and tool_choice "required" / a named function, as a
        constraint on what may be drawn (harmony_io.constraint); None when the request constrains nothing."""
        param = "tool_choice"
        try:
            param = format_param
            output_constraint(response_format)  # the format alone: its errors name the format
            param = "tool_choice"
            spec = output_constraint(response_format, tools, tool_choice)
        except HarmonyIOError as e:
            raise APIError(400, str(e), param=param) from None
        if spec is None:
            return None
        # the answer must still fit after the reasoning: a quarter of the budget is kept for it
        return HarmonyConstraint(dataclasses.replace(spec, max_reasoning_tokens=budget * 3 // 4))

    def start(self, gen: Generation) -> Running:
        """Queue a prepared generation in the engine (errors here are plain HTTP errors)."""
        inbox = Inbox()
        try:
            handle = self.engine.submit(gen.prompt, push=inbox.push, max_tokens=gen.max_tokens,
                                        temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed, tools=gen.tools,
                                        speculate=gen.speculate, logprobs=gen.logprobs, constraint=gen.constraint)
        except EngineBusy as e:
            raise APIError(429, f"The server is busy: {e}. Retry shortly.", type="rate_limit_error",
                           code="queue_full") from None
        except EngineClosed:
            raise shutting_down() from None
        except RuntimeUserError as e:
            raise APIError(400, str(e)) from None
        return Running(handle, inbox)

    async def run(self, gen: Generation, running: Running, mapper: Optional[EventMapper] = None,
                  record: Optional[dict] = None) -> AsyncIterator[Any]:
        """Follow a started generation, yielding what `mapper` maps each event to; ends with an Outcome.

        One turn per generation: the mapper's turn (which mints the tool call ids the client sees) is
        the Outcome's, so the ids streamed, returned, stored and remembered are the same. `record`
        receives the figures the request log shows. Raises APIError when the generation failed or the
        server is shutting down.
        """
        turn = mapper.turn if mapper is not None else AssistantTurn()
        watcher = StopWatcher(gen.stop)
        reasoning_tokens = 0
        visible_logprobs: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []

        def emit(ev: Event) -> list:
            if mapper is None:
                turn.add(ev)
                return []
            return mapper(ev)  # adds ev to mapper.turn

        try:
            async for ev in running.events():
                if watcher.hit:
                    continue  # cut by a stop string: the rest is drained until the end arrives
                if isinstance(ev, Logprobs):  # the tokens of the event that follows
                    pending = [logprob_entry(lp, gen.logprobs or 0) for lp in ev.entries]
                    continue
                shown, pending = (pending if isinstance(ev, (TextDelta, PreambleDelta)) else []), []
                if shown:
                    visible_logprobs += shown
                    yield TokenLogprobs(shown)
                if isinstance(ev, ReasoningDelta):
                    reasoning_tokens += len(ev.tokens)
                if isinstance(ev, (TextDelta, PreambleDelta)) and watcher.stops:
                    ev = type(ev)(watcher.feed(ev.text), ev.tokens)
                    if not ev.text and not watcher.hit:
                        continue
                for out in emit(ev):
                    yield out
                if watcher.hit:
                    running.cancel()
        finally:
            running.cancel()  # a no-op once it ended; a client gone (the generator closed) stops it here
        finished = running.finished
        stats = finished.stats
        if record is not None:
            record.update(figures(stats))
        if finished.error is not None:
            if isinstance(finished.error, RuntimeUserError):
                raise APIError(400, str(finished.error))
            raise finished.error
        if stats.finish_reason == "cancelled" and not watcher.hit:
            raise shutting_down() if self.shutting_down else APIError(499, "The request was cancelled.")
        if not watcher.hit:
            rest = watcher.flush()
            if rest:
                for out in emit(TextDelta(rest)):
                    yield out
        self.exact_history.remember(turn)
        yield Outcome(turn, stats, finish_reason(turn, stats, watcher.hit), reasoning_tokens, visible_logprobs)

    async def complete(self, gen: Generation, running: Running, mapper: Optional[EventMapper] = None,
                       record: Optional[dict] = None) -> Outcome:
        """Run a generation to its end (non-streamed requests)."""
        outcome = None
        async for item in self.run(gen, running, mapper, record):
            if isinstance(item, Outcome):
                outcome = item
        assert outcome is not None, "run() always ends with an Outcome"
        return outcome

    def shutdown(self) -> None:
        """Refuse new generations and cancel what runs (open streams then end properly)."""
        self.shutting_down = True
        self.engine.core.shutdown()


def shutting_down() -> APIError:
    return APIError(503, "The server is shutting down.", type="server_error", code="server_shutting_down")


def finish_reason(turn: AssistantTurn, stats: GenerationStats, stopped: bool) -> str:
    """The API's finish reason: tool calls, a client stop string, the token limit, or a stop."""
    if turn.api_finish_reason == "tool_calls":
        return "tool_calls"
    if stopped:
        return "stop"
    return "length" if stats.finish_reason == "length" else "stop"


def figures(stats: GenerationStats) -> dict[str, Any]:
    """What the request log shows of a generation."""
    return {"prompt": stats.prompt_tokens, "cached": stats.reused_tokens, "generated": stats.generated_tokens,
            "tps": stats.decode_tps, "ttft": stats.first_token_seconds, "finish": stats.finish_reason}


def logprob_entry(lp: Any, top: int) -> dict[str, Any]:
    """A token's logprob in OpenAI's shape (Chat `logprobs.content[]`, Responses `output_text.logprobs[]`)."""
    def one(token: int, logprob: float) -> dict[str, Any]:
        raw = token_bytes(token)
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

    return dict(one(lp.token, lp.logprob), top_logprobs=[one(t, v) for t, v in lp.top[:top]])


def usage_chat(o: Outcome) -> dict[str, Any]:
    return {"prompt_tokens": o.stats.prompt_tokens, "completion_tokens": o.stats.generated_tokens,
            "total_tokens": o.stats.prompt_tokens + o.stats.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": o.stats.reused_tokens},
            "completion_tokens_details": {"reasoning_tokens": o.reasoning_tokens}}
