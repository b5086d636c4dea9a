"""Checks of a parsed request that the request models alone cannot make: the parameter policy of a local server.

- Parameters: a local server meets clients it was not written for, and they send fields of their own
  (Codex CLI's `client_metadata`, the gpt-oss reference tests' `session_id`). An unknown parameter is
  accepted and ignored: logged once per name at warning level and listed in the response's
  `x-gptoss-ignored-parameters` header. Known parameters that change nothing about the answer are
  accepted with any value. Known parameters this server cannot honour are refused by name when they
  ask for something (anything but their default, or null) -- silently ignoring `functions` or a
  non-zero `presence_penalty` would answer a different question than the one asked.
- Completion limits beyond the model's context are refused instead of silently shortened.
- A tool result must answer a call that was made: a `tool_call_id` (Chat) or `call_id` (Responses)
  that no earlier assistant message or stored response issued is refused.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from .api_models import APIError, ChatCompletionRequest, ResponsesRequest

if TYPE_CHECKING:
    from .response_store import ResponseStore

ANY = object()  # accepted with any value (it changes nothing here)
IGNORED_HEADER = "x-gptoss-ignored-parameters"
log = logging.getLogger("gptoss.server")

CHAT_OTHER_PARAMETERS: dict[str, Any] = {
    "user": ANY, "metadata": ANY, "store": ANY, "service_tier": ANY, "prompt_cache_key": ANY,
    "safety_identifier": ANY, "verbosity": ANY,
    "frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logit_bias": ({},), "modalities": (["text"],),
    "audio": (), "prediction": (), "web_search_options": (), "functions": (), "function_call": (),
}
RESPONSES_OTHER_PARAMETERS: dict[str, Any] = {
    "user": ANY, "service_tier": ANY, "prompt_cache_key": ANY, "safety_identifier": ANY,
    "stream_options": ANY, "max_tool_calls": ANY, "client_metadata": ANY,
    "truncation": ("disabled", "auto"),  # the prompt fits or is refused: neither truncates anything here
    "background": (False,), "conversation": (), "prompt": (),
}
_warned: set[str] = set()


def _check_parameters(extra: Optional[dict[str, Any]], known: dict[str, Any]) -> list[str]:
    """The unknown parameters (ignored); raises for a known one asking for what cannot be honoured."""
    ignored = []
    for name, value in (extra or {}).items():
        if name not in known:
            ignored.append(name)
            if name not in _warned:
                _warned.add(name)
                log.warning("ignoring request parameter %r, which this server does not know (it changes nothing)",
                            name)
            continue
        allowed = known[name]
        if allowed is not ANY and value is not None and value not in allowed:
            default = repr(allowed[0]) if allowed else "null"
            raise APIError(400, f"{name} is not supported by this server (only its default, {default})",
                           code="unsupported_parameter", param=name)
    return ignored


def _check_limit(name: str, value: Optional[int], context: int) -> None:
    if value is not None and value > context:
        raise APIError(400, f"{name} is too large: {value}. This model's context holds {context} tokens "
                       "(prompt and completion together).", code="invalid_value", param=name)


def _call_ids(msg: Any) -> list[str]:
    """The ids of the tool calls one (Chat-shaped) assistant message issued."""
    if not (isinstance(msg, dict) and msg.get("role") == "assistant"):
        return []
    calls = msg.get("tool_calls") or []
    return [call["id"] for call in calls if isinstance(call, dict) and isinstance(call.get("id"), str)]


def check_chat(req: ChatCompletionRequest, context: int) -> list[str]:
    """Refuses what cannot be answered; returns the parameters ignored."""
    ignored = _check_parameters(req.model_extra, CHAT_OTHER_PARAMETERS)
    _check_limit("max_tokens", req.max_tokens, context)
    _check_limit("max_completion_tokens", req.max_completion_tokens, context)
    issued: set[str] = set()  # by the messages before this one
    for i, msg in enumerate(req.messages):
        call_id = msg.get("tool_call_id")
        if msg.get("role") == "tool" and isinstance(call_id, str) and call_id not in issued:
            raise APIError(400, f"messages[{i}]: tool_call_id {call_id!r} answers no tool call of an earlier assistant "
                           "message: a message with role 'tool' must respond to a preceding message with 'tool_calls'.",
                           param=f"messages.[{i}].tool_call_id")
        issued.update(_call_ids(msg))
    return ignored


def check_responses(req: ResponsesRequest, context: int, stored_responses: "ResponseStore") -> list[str]:
    """`stored_responses`: the stored responses (for the calls `previous_response_id` made).
    Refuses what cannot be answered; returns the parameters ignored."""
    ignored = _check_parameters(req.model_extra, RESPONSES_OTHER_PARAMETERS)
    _check_limit("max_output_tokens", req.max_output_tokens, context)
    stored: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        if req.previous_response_id not in stored_responses:
            return ignored  # the service answers that with its 404
        stored = stored_responses.conversation(req.previous_response_id)
    if isinstance(req.input, str):
        return ignored
    issued = {call_id for msg in stored for call_id in _call_ids(msg)}
    for i, item in enumerate(req.input):
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call" and isinstance(item.get("call_id"), str):
            issued.add(item["call_id"])
        elif item.get("type") == "function_call_output" and isinstance(item.get("call_id"), str) \
                and item["call_id"] not in issued:
            raise APIError(400, f"No tool call found for function call output with call_id {item['call_id']}.",
                           param=f"input.[{i}].call_id")
    return ignored
