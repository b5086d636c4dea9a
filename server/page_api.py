"""The chat page's service: its requests mapped onto the assistant Workspace.

Transport-free like openai_api.py (page_routes.py maps HTTP onto it). A turn runs the Workspace's tool
loop (the OpenAI API only *describes* tool calls, the page's turns execute them) on a thread of its own:
its generations queue in the engine beside API requests, and its tool calls hold none of the engine's
sequences. Its events are pushed into the server's loop (bridge.Inbox) and streamed to the page as
small JSON objects (`page_event`). Stopping a turn (the stop button, the page going away, shutdown) sets
its StopSignal: the engine drops the generation at its next step, and the turn ends before its next
tool call.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

from gptoss_metal.assistant import (
    AssistantError,
    ContextFull,
    ConversationStore,
    NoSuchConversation,
    StopSignal,
    ToolResult,
    TurnFinished,
    Workspace,
)
from gptoss_metal.assistant.export import to_json, to_markdown
from gptoss_metal.assistant.session import StepLimitReached
from gptoss_metal.harmony_io import (
    HarmonyIOError,
    PreambleDelta,
    ReasoningDelta,
    TextDelta,
    ToolCallBegin,
    ToolCallDelta,
    ToolCallEnd,
    tool_name,
)
from gptoss_metal.metal_runtime import RuntimeUserError
from gptoss_metal.metal_runtime.serving import EngineBusy, EngineClosed

from . import sse
from .api_models import APIError, ConversationPatch, PageSettings, TurnRequest
from .bridge import Inbox

END = object()


@dataclass(eq=False)
class Turn:
    """A running turn of one conversation: its items arrive in `inbox`, `stop` ends it."""

    inbox: Inbox
    ahead: int = 0  # generations before this turn's first one, when it started
    stop: StopSignal = field(default_factory=StopSignal)


def page_event(item: Any) -> Optional[dict[str, Any]]:
    """One streamed item of a turn as the page reads it (None: nothing the page shows)."""
    if isinstance(item, ReasoningDelta):
        return {"type": "reasoning", "text": item.text}
    if isinstance(item, TextDelta):
        return {"type": "answer", "text": item.text}
    if isinstance(item, PreambleDelta):
        return {"type": "preamble", "text": item.text}
    if isinstance(item, ToolCallBegin):
        return {"type": "tool_call", "name": tool_name(item.recipient), "known": item.known}
    if isinstance(item, ToolCallDelta):
        return {"type": "tool_code", "text": item.text}
    if isinstance(item, ToolCallEnd):
        return {"type": "tool_call_end", "arguments": item.arguments}
    if isinstance(item, ToolResult):
        return {"type": "tool_result", "name": item.name, "call_id": item.call_id, "output": item.output,
                "status": item.status}
    if isinstance(item, StepLimitReached):
        return {"type": "notice", "text": f"Stopped after {item.steps} tool calls in a row."}
    if isinstance(item, TurnFinished):
        return {"type": "done", "figures": item.figures, "interrupted": item.interrupted}
    return None


class PageService:
    def __init__(self, workspace: Workspace, *, model_id: str):
        self.workspace = workspace
        self.store: ConversationStore = workspace.store
        self.engine = workspace.engine
        self.model_id = model_id
        self.turns: dict[str, Turn] = {}  # conversation id -> its running turn

    def info(self) -> dict[str, Any]:
        engine = self.workspace.engine
        return {"model": self.model_id, "context_length": engine.model.args.max_position_embeddings,
                "efforts": ["low", "medium", "high"], "max_tokens": self.workspace.max_tokens}

    # -- conversations ----------------------------------------------------------------------

    def _get(self, conv_id: str):
        conv = self.store.get(conv_id)
        if conv is None:
            raise APIError(404, f"No conversation {conv_id!r} (it may have been deleted).", code="not_found")
        return conv

    def list(self) -> dict[str, Any]:
        return {"data": self.store.list()}

    def create(self, settings: PageSettings) -> dict[str, Any]:
        conv = self.store.create(system=settings.system, effort=settings.effort or "medium",
                                 python=bool(settings.python))
        return conv.view()

    def get(self, conv_id: str) -> dict[str, Any]:
        view = self._get(conv_id).view()
        view["busy"] = conv_id in self.turns
        return view

    def _apply(self, conv_id: str, body: PageSettings, title: Optional[str] = None) -> None:
        system = body.system if "system" in body.model_fields_set else ...
        if not self.store.update(conv_id, title=title, system=system, effort=body.effort, python=body.python):
            raise APIError(404, f"No conversation {conv_id!r} (it may have been deleted).", code="not_found")
        if body.python is False:
            self.workspace.forget(conv_id)

    def patch(self, conv_id: str, body: ConversationPatch) -> dict[str, Any]:
        self._apply(conv_id, body, title=body.title)
        return self.get(conv_id)

    def delete(self, conv_id: str) -> dict[str, Any]:
        turn = self.turns.pop(conv_id, None)
        if turn is not None:
            turn.stop.set()
        if not self.store.delete(conv_id):
            raise APIError(404, f"No conversation {conv_id!r}.", code="not_found")
        self.workspace.forget(conv_id)
        return {"id": conv_id, "deleted": True}

    def export(self, conv_id: str, fmt: str) -> tuple[str, str, str]:
        """(body, media type, file name) of a conversation export."""
        conv = self._get(conv_id)
        stem = "".join(ch if ch.isalnum() or ch in "-_ " else "_" for ch in conv.title).strip()[:60] or "conversation"
        if fmt == "json":
            return json.dumps(to_json(conv), ensure_ascii=False, indent=1), "application/json", stem + ".json"
        if fmt in ("md", "markdown"):
            return to_markdown(conv), "text/markdown; charset=utf-8", stem + ".md"
        raise APIError(400, f"unknown export format {fmt!r} (json, markdown)", param="format")

    # -- turns --------------------------------------------------------------------------------

    def start_turn(self, conv_id: str, body: TurnRequest) -> Turn:
        """Validate, apply the settings, and start the turn (errors here are plain HTTP errors)."""
        self._get(conv_id)
        if conv_id in self.turns:
            raise APIError(409, "This conversation is still answering; stop it first.", code="turn_in_progress")
        if body.mode != "regenerate" and not (body.text or "").strip():
            raise APIError(400, "The message is empty.", param="text")
        queue = self.engine.core.max_queue
        if queue is not None and self.engine.waiting >= queue:
            raise APIError(429, f"The model is busy ({self.engine.waiting} requests are waiting). Try again "
                           "shortly.", type="rate_limit_error", code="queue_full")
        self._apply(conv_id, body)
        busy = max(0, self.engine.active - self.engine.max_sequences + 1)  # no free sequence: one must end first
        turn = Turn(Inbox(), ahead=self.engine.waiting + busy)

        def release() -> None:  # the conversation is free again (before the page hears the turn ended)
            if self.turns.get(conv_id) is turn:
                del self.turns[conv_id]

        def work() -> None:
            try:
                for item in self.workspace.run_turn(conv_id, body.text, mode=body.mode, stop=turn.stop):
                    if isinstance(item, TurnFinished):
                        release()
                    turn.inbox.push(item)
            except BaseException as e:  # noqa: BLE001 - delivered to the page, which shows it
                release()
                turn.inbox.push(e)
            finally:
                release()
                turn.inbox.push(END)

        self.turns[conv_id] = turn
        threading.Thread(target=work, name=f"gptoss-turn-{conv_id}", daemon=True).start()
        return turn

    def stop(self, conv_id: str) -> dict[str, Any]:
        turn = self.turns.get(conv_id)
        if turn is not None:
            turn.stop.set()
        return {"id": conv_id, "stopping": turn is not None}

    def shutdown(self) -> None:
        """Stop every running turn (the server is going away)."""
        for turn in list(self.turns.values()):
            turn.stop.set()

    async def turn_events(self, conv_id: str, turn: Turn) -> AsyncIterator[str]:
        """The turn's SSE lines; always ends with a `done` or an `error` event."""
        yield sse.data({"type": "start", "conversation": conv_id, "queued": turn.ahead})
        try:
            while True:  # a page that leaves cancels this generator (StreamingResponse): `finally` still runs
                item = await turn.inbox.get()
                if item is END:
                    break
                if isinstance(item, BaseException):
                    yield sse.data(self._error_event(item))
                    break
                ev = page_event(item)
                if ev is not None:
                    yield sse.data(ev)
        finally:
            turn.stop.set()  # the page went away (or the turn ended): free the model at its next step

    @staticmethod
    def _error_event(e: BaseException) -> dict[str, Any]:
        if isinstance(e, EngineBusy):
            return {"type": "error", "code": "queue_full", "message": f"The model is busy ({e}). Try again shortly."}
        if isinstance(e, EngineClosed):
            return {"type": "error", "code": "server_shutting_down", "message": "The server is shutting down."}
        if isinstance(e, ContextFull):
            return {"type": "error", "code": "context_length_exceeded", "message": f"The context is full: {e}."}
        if isinstance(e, NoSuchConversation):
            return {"type": "error", "code": "not_found", "message": str(e)}
        if isinstance(e, (AssistantError, HarmonyIOError, RuntimeUserError)):
            return {"type": "error", "code": "invalid_request", "message": str(e)}
        return {"type": "error", "code": "internal_error", "message": f"The model failed: {type(e).__name__}: {e}"}
