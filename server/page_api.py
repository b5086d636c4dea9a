"""The chat page's service: its requests mapped onto the assistant Workspace and the model's queue.

Transport-free like openai_api.py (page_routes.py maps HTTP onto it). A turn is queued on the same
Scheduler as API requests, so the page and API clients take turns on the one model; it runs the
Workspace's tool loop (the OpenAI API only *describes* tool calls, the page's turns execute them),
and its events are streamed to the page as small JSON objects (`page_event`). Stopping a turn
cancels its job: the engine checks between tokens, so the model is free within a token.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Optional

from gptoss_metal.assistant import (
    AssistantError,
    ContextFull,
    ConversationStore,
    NoSuchConversation,
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

from .api_models import APIError, ConversationPatch, PageSettings, TurnRequest
from .scheduler import END, Job, QueueFull, Scheduler


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


def sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


class PageService:
    def __init__(self, workspace: Workspace, scheduler: Scheduler, *, model_id: str):
        self.workspace = workspace
        self.store: ConversationStore = workspace.store
        self.scheduler = scheduler
        self.model_id = model_id
        self.jobs: dict[str, Job] = {}  # conversation id -> its queued or running turn

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
        view["busy"] = conv_id in self.jobs
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
        job = self.jobs.pop(conv_id, None)
        if job is not None:
            job.cancel()
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

    def start_turn(self, conv_id: str, body: TurnRequest) -> Job:
        """Validate, apply the settings, and queue the turn (errors here are plain HTTP errors)."""
        self._get(conv_id)
        if conv_id in self.jobs:
            raise APIError(409, "This conversation is still answering; stop it first.", code="turn_in_progress")
        if body.mode != "regenerate" and not (body.text or "").strip():
            raise APIError(400, "The message is empty.", param="text")
        self._apply(conv_id, body)

        def work(job: Job) -> None:
            for item in self.workspace.run_turn(conv_id, body.text, mode=body.mode,
                                                should_stop=job.cancelled.is_set):
                job.put(item)

        try:
            job = self.scheduler.submit(work)
        except QueueFull as e:
            raise APIError(429, f"The model is busy ({e}). Try again shortly.", type="rate_limit_error",
                           code="queue_full") from None
        self.jobs[conv_id] = job
        return job

    def stop(self, conv_id: str) -> dict[str, Any]:
        job = self.jobs.get(conv_id)
        if job is not None:
            job.cancel()
        return {"id": conv_id, "stopping": job is not None}

    async def turn_events(self, conv_id: str, job: Job) -> AsyncIterator[str]:
        """The turn's SSE lines; always ends with a `done` or an `error` event."""
        ahead = self.scheduler.pending - 1 + (self.scheduler.running is not None)
        yield sse({"type": "start", "conversation": conv_id, "queued": max(ahead, 0)})
        try:
            while True:  # a client that leaves cancels this generator (StreamingResponse): `finally` still runs
                item = await job.get()
                if item is END:
                    break
                if isinstance(item, BaseException):
                    yield sse(self._error_event(item))
                    break
                ev = page_event(item)
                if ev is not None:
                    yield sse(ev)
        finally:
            job.cancel()  # the page went away (or the turn ended): free the model within a token
            if self.jobs.get(conv_id) is job:
                del self.jobs[conv_id]

    @staticmethod
    def _error_event(e: BaseException) -> dict[str, Any]:
        if isinstance(e, ContextFull):
            return {"type": "error", "code": "context_length_exceeded", "message": f"The context is full: {e}."}
        if isinstance(e, NoSuchConversation):
            return {"type": "error", "code": "not_found", "message": str(e)}
        if isinstance(e, (AssistantError, HarmonyIOError, RuntimeUserError)):
            return {"type": "error", "code": "invalid_request", "message": str(e)}
        return {"type": "error", "code": "internal_error", "message": f"The model failed: {type(e).__name__}: {e}"}
