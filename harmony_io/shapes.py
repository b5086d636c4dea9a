"""Mapping parser events to OpenAI's shapes: Chat Completions and Responses, whole and streamed.

Pure functions and small accumulators, no I/O: the server issue serializes what they return.
Tool call ids do not exist in harmony; they are minted here (`call_...`) and the renderer maps
them back through `tool_call_id` when the client sends results.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .events import (
    Done,
    Event,
    MessageEnd,
    PreambleDelta,
    ReasoningDelta,
    TextDelta,
    ToolCallBegin,
    ToolCallDelta,
    ToolCallEnd,
)
from .grammar import split_name, tool_name


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class ToolCall:
    id: str
    name: str
    recipient: str
    arguments: str = ""
    channel: Optional[str] = None
    known: bool = True
    complete: bool = False


@dataclass
class AssistantTurn:
    """Everything one generation produced, accumulated from parser events."""

    reasoning: str = ""
    content: str = ""
    preamble: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: Optional[str] = None  # "stop" | "length" | "tool_calls"
    messages: list[dict] = field(default_factory=list)  # each generated message with its tokens
    id_factory: Callable[[str], str] = field(default=new_id, repr=False)

    def add(self, event: Event) -> None:
        if isinstance(event, ReasoningDelta):
            self.reasoning += event.text
        elif isinstance(event, TextDelta):
            self.content += event.text
        elif isinstance(event, PreambleDelta):
            self.preamble += event.text
        elif isinstance(event, ToolCallBegin):
            self.tool_calls.append(ToolCall(self.id_factory("call"), tool_name(event.recipient), event.recipient,
                                            channel=event.channel, known=event.known))
        elif isinstance(event, ToolCallDelta) and self.tool_calls:
            self.tool_calls[-1].arguments += event.text
        elif isinstance(event, ToolCallEnd) and self.tool_calls:
            self.tool_calls[-1].complete = True
        elif isinstance(event, MessageEnd):
            self.messages.append(
                {"channel": event.channel, "recipient": event.recipient, "stop": event.stop,
                 "tokens": list(event.message_tokens)}
            )
        elif isinstance(event, Done):
            self.finish_reason = {"tool_call": "tool_calls"}.get(event.reason, event.reason)

    def extend(self, events: list[Event]) -> "AssistantTurn":
        for e in events:
            self.add(e)
        return self

    @property
    def exact_history(self) -> Optional[list[dict]]:
        """The raw messages, if every one of them closed properly (else history must be re-rendered)."""
        msgs = self.messages
        if msgs and all(m["stop"] in ("end", "return", "call") for m in msgs):
            return msgs
        return None

    @property
    def visible_text(self) -> str:
        """What a chat user sees: the final answer, else the preamble."""
        return self.content or self.preamble

    @property
    def declared_calls(self) -> list[ToolCall]:
        """The calls of tools the prompt declared: what an API returns. A call to anything else (`python`
        when the request declared no such tool) is never handed to a client as a call of its own."""
        return [c for c in self.tool_calls if c.known]

    @property
    def api_finish_reason(self) -> Optional[str]:
        if self.finish_reason == "tool_calls" and not self.declared_calls:
            return "stop"
        return self.finish_reason


def function_call_item(call: ToolCall, item_id: str, status: str) -> dict[str, Any]:
    """A Responses `function_call` item; a namespaced function's namespace goes in its own field."""
    namespace, name = split_name(call.name)
    item = {"type": "function_call", "id": item_id, "call_id": call.id, "name": name, "arguments": call.arguments,
            "status": status}
    if namespace is not None:
        item["namespace"] = namespace
    return item


def output_text_part(text: str) -> dict[str, Any]:
    """A Responses `output_text` content part, with the fields OpenAI always sends."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def chat_message(turn: AssistantTurn) -> dict[str, Any]:
    """A Chat Completions assistant message.

    The reasoning goes in `reasoning`, what OpenAI's guidance for gpt-oss providers and the gpt-oss
    compatibility tests read, and also in `reasoning_content` (vLLM/DeepSeek-style) for clients
    that read that. Neither is in OpenAI's own schema.
    """
    msg: dict[str, Any] = {"role": "assistant", "content": turn.visible_text or None, "refusal": None,
                           "annotations": []}
    if turn.reasoning:
        msg["reasoning"] = msg["reasoning_content"] = turn.reasoning
    if turn.declared_calls:
        msg["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in turn.declared_calls
        ]
    return msg


def responses_items(turn: AssistantTurn, id_factory: Callable[[str], str] = new_id) -> list[dict[str, Any]]:
    """A turn summarized as Responses output items: reasoning, the visible text, function calls.

    The server returns `ResponsesStreamMapper.items` instead (streamed or not): one item per harmony
    message, in generation order, with the ids the turn minted.
    """
    items: list[dict[str, Any]] = []
    if turn.reasoning:
        items.append({"type": "reasoning", "id": id_factory("rs"), "summary": [],
                      "content": [{"type": "reasoning_text", "text": turn.reasoning}]})
    if turn.visible_text:
        items.append({"type": "message", "id": id_factory("msg"), "role": "assistant", "status": "completed",
                      "content": [output_text_part(turn.visible_text)]})
    for c in turn.declared_calls:
        items.append(function_call_item(c, id_factory("fc"), "completed" if c.complete else "incomplete"))
    return items


class ChatStreamMapper:
    """Parser events -> Chat Completions streaming `delta` dicts (one per event that shows)."""

    def __init__(self, turn: Optional[AssistantTurn] = None):
        self.turn = turn or AssistantTurn()
        self._tool_index = -1
        self._in_call = False  # inside a call of a declared tool (others are not shown: declared_calls)

    def __call__(self, event: Event) -> list[dict[str, Any]]:
        self.turn.add(event)
        if isinstance(event, ReasoningDelta):
            return [{"reasoning": event.text, "reasoning_content": event.text}]
        if isinstance(event, (TextDelta, PreambleDelta)):
            return [{"content": event.text}]
        if isinstance(event, ToolCallBegin):
            self._in_call = event.known
            if not event.known:
                return []
            self._tool_index += 1
            call = self.turn.tool_calls[-1]
            return [{"tool_calls": [{"index": self._tool_index, "id": call.id, "type": "function",
                                     "function": {"name": call.name, "arguments": ""}}]}]
        if isinstance(event, ToolCallDelta) and self._in_call:
            return [{"tool_calls": [{"index": self._tool_index, "function": {"arguments": event.text}}]}]
        return []


class ResponsesStreamMapper:
    """Parser events -> Responses API stream events (without sequence numbers and envelopes).

    Emits `response.output_item.added`, `response.content_part.added`, `response.output_text.delta`,
    `response.reasoning_text.delta`, `response.function_call_arguments.delta`, the matching
    `...done` events and `response.output_item.done`. The caller wraps them between
    `response.created` and `response.completed`.
    """

    def __init__(self, turn: Optional[AssistantTurn] = None, id_factory: Callable[[str], str] = new_id):
        self.turn = turn or AssistantTurn()
        self.ids = id_factory
        self.items: list[dict[str, Any]] = []
        self._open: Optional[dict[str, Any]] = None  # the item being streamed
        self._text = ""

    def close(self) -> list[dict[str, Any]]:
        """The done events of an item left open (the server cut the text at a stop string)."""
        return self._close(complete=True)

    def _close(self, complete: bool) -> list[dict[str, Any]]:
        """Finish the open item; `complete=False` when its message was cut short (a token limit)."""
        item, self._open = self._open, None
        if item is None:
            return []
        idx = len(self.items) - 1
        out: list[dict[str, Any]] = []
        if item["type"] == "message":
            out.append({"type": "response.output_text.done", "item_id": item["id"], "output_index": idx,
                        "content_index": 0, "text": self._text, "logprobs": []})
            part = output_text_part(self._text)
            out.append({"type": "response.content_part.done", "item_id": item["id"], "output_index": idx,
                        "content_index": 0, "part": part})
            item["content"] = [part]
            item["status"] = "completed" if complete else "incomplete"
        elif item["type"] == "reasoning":
            out.append({"type": "response.reasoning_text.done", "item_id": item["id"], "output_index": idx,
                        "content_index": 0, "text": self._text})
            item["content"] = [{"type": "reasoning_text", "text": self._text}]
        elif item["type"] == "function_call":
            out.append({"type": "response.function_call_arguments.done", "item_id": item["id"],
                        "output_index": idx, "arguments": self._text})
            item["arguments"] = self._text
            item["status"] = "completed" if complete else "incomplete"
        out.append({"type": "response.output_item.done", "output_index": idx, "item": dict(item)})
        self._text = ""
        return out

    def _open_item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._close(complete=True)
        self.items.append(item)
        self._open = item
        idx = len(self.items) - 1
        out.append({"type": "response.output_item.added", "output_index": idx, "item": dict(item)})
        if item["type"] == "message":
            out.append({"type": "response.content_part.added", "item_id": item["id"], "output_index": idx,
                        "content_index": 0, "part": output_text_part("")})
        return out

    def __call__(self, event: Event) -> list[dict[str, Any]]:
        self.turn.add(event)
        out: list[dict[str, Any]] = []
        if isinstance(event, ReasoningDelta):
            if self._open is None or self._open["type"] != "reasoning":
                out += self._open_item({"type": "reasoning", "id": self.ids("rs"), "summary": [], "content": []})
            self._text += event.text
            out.append({"type": "response.reasoning_text.delta", "item_id": self._open["id"],
                        "output_index": len(self.items) - 1, "content_index": 0, "delta": event.text})
        elif isinstance(event, (TextDelta, PreambleDelta)):
            if self._open is None or self._open["type"] != "message":
                out += self._open_item({"type": "message", "id": self.ids("msg"), "role": "assistant",
                                        "status": "in_progress", "content": []})
            self._text += event.text
            out.append({"type": "response.output_text.delta", "item_id": self._open["id"],
                        "output_index": len(self.items) - 1, "content_index": 0, "delta": event.text,
                        "logprobs": []})
        elif isinstance(event, ToolCallBegin):
            if event.known:
                out += self._open_item(function_call_item(self.turn.tool_calls[-1], self.ids("fc"), "in_progress"))
            else:  # an undeclared tool: no item (declared_calls)
                out += self._close(complete=True)
        elif isinstance(event, ToolCallDelta) and self._open is not None and self._open["type"] == "function_call":
            self._text += event.text
            out.append({"type": "response.function_call_arguments.delta", "item_id": self._open["id"],
                        "output_index": len(self.items) - 1, "delta": event.text})
        elif isinstance(event, MessageEnd):
            out += self._close(complete=event.stop != "truncated")
        elif isinstance(event, Done):
            out += self._close(complete=event.reason != "length")
        return out
