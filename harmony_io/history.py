"""Conversation history in chat-message form, with *exact history*: the model's own tokens.

Exact history is one concept with one name. An assistant message may carry `exact_history`: the
messages the model generated, each with its tokens from `<|start|>` through its stop token (as the
stream parser recorded them). The renderer splices them in verbatim, so the next prompt starts with
exactly the tokens a prompt cache holds. Clients of an HTTP API echo assistant messages back without
those tokens; `ExactHistoryMemory` recognises an echoed message and re-attaches them.

Also here: the Responses API's input items -> chat messages (the inverse of `responses_items`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Optional, Sequence

from .errors import HarmonyIOError
from .grammar import qualified_name
from .shapes import AssistantTurn, chat_message

EXACT_HISTORY = "exact_history"  # the message key


def history_message(turn: AssistantTurn, *, interrupted: bool = False) -> dict[str, Any]:
    """The assistant message a conversation keeps for `turn` (what the next prompt renders).

    An interrupted turn keeps its partial visible text, marked, and nothing else: its unfinished
    reasoning and tool calls are not history.
    """
    msg: dict[str, Any] = {"role": "assistant", "content": turn.visible_text}
    if interrupted:
        msg["interrupted"] = True
        return msg
    if turn.reasoning:
        msg["reasoning"] = turn.reasoning
    if turn.tool_calls:
        # the channel tells the renderer where the call (and its result) belong
        msg["tool_calls"] = [{"id": c.id, "type": "function", "channel": c.channel,
                              "function": {"name": c.name, "arguments": c.arguments}} for c in turn.tool_calls]
    if turn.exact_history:
        msg[EXACT_HISTORY] = turn.exact_history
    return msg


def _echo_signature(msg: dict[str, Any]) -> Optional[tuple]:
    """Identity of an assistant message as clients echo it back (they often omit the reasoning)."""
    if msg.get("role") != "assistant":
        return None
    content = msg.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = tuple(
        (c.get("function", {}).get("name"), c.get("function", {}).get("arguments"))
        for c in (msg.get("tool_calls") or []) if isinstance(c, dict) and isinstance(c.get("function"), dict)
    )
    return (content or "", calls)


class ExactHistoryMemory:
    """The exact history of recent assistant turns, found again from the messages clients echo."""

    def __init__(self, capacity: int = 512):
        self.capacity = capacity
        self._by_signature: OrderedDict[tuple, list[dict]] = OrderedDict()

    def remember(self, turn: AssistantTurn) -> None:
        if turn.exact_history:
            key = _echo_signature(chat_message(turn))
            self._by_signature[key] = turn.exact_history
            self._by_signature.move_to_end(key)
            while len(self._by_signature) > self.capacity:
                self._by_signature.popitem(last=False)

    def attach(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """`messages` with exact history attached to every echoed assistant message we generated."""
        out = []
        for m in messages:
            if isinstance(m, dict) and m.get("role") == "assistant" and not m.get(EXACT_HISTORY):
                exact = self._by_signature.get(_echo_signature(m))
                if exact is not None:
                    m = dict(m, **{EXACT_HISTORY: exact})
            out.append(m)
        return out

    def __len__(self) -> int:
        return len(self._by_signature)


def responses_input_messages(items: Sequence[Any], history: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Chat messages for Responses API input items, appended to `history` (a stored conversation).

    Items: `message` (any role), `function_call` (the model's call, echoed back), `function_call_output`
    (the client's result, matched to its call by `call_id`), `reasoning`. Consecutive function calls
    join one assistant message, as the model made them in one turn.
    """
    out = [dict(m) for m in history]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise HarmonyIOError(f"input[{i}] must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            out.append({"role": item.get("role", "user"), "content": item.get("content")})
        elif kind == "function_call":
            name = item.get("name")
            if isinstance(name, str):
                name = qualified_name(name, item.get("namespace"))
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": name, "arguments": item.get("arguments", "")}}
            last = out[-1] if out else None
            if last is not None and last.get("role") == "assistant" and not last.get("content") \
                    and EXACT_HISTORY not in last:
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": _output_text(item.get("output"))})
        elif kind == "reasoning":
            text = "".join(c.get("text", "") for c in item.get("content") or [] if isinstance(c, dict))
            out.append({"role": "assistant", "reasoning": text, "content": None})
        else:
            raise HarmonyIOError(f"input[{i}]: unsupported item type {kind!r}")
    return out


def _output_text(output: Any) -> str:
    """A function call's output as the model reads it: a string, the text of content parts, else JSON."""
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in output):
        return "".join(p["text"] for p in output)
    return json.dumps(output)
