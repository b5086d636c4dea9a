"""What the stream parser emits: one event type per thing a reader of harmony output cares about.

Every event carries the input token ids it accounts for (`tokens`): every text token of the parsed
input appears in exactly one event, in order (control tokens in none). Consumers (the OpenAI shapes,
the assistant, the CLI) import these from the `harmony_io` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union


@dataclass
class MessageBegin:
    channel: Optional[str]
    recipient: Optional[str]
    content_type: Optional[str]
    tokens: tuple[int, ...] = ()


@dataclass
class ReasoningDelta:
    text: str
    tokens: tuple[int, ...] = ()


@dataclass
class TextDelta:
    """Final-answer text (the `final` channel, or a message without a channel)."""

    text: str
    tokens: tuple[int, ...] = ()


@dataclass
class PreambleDelta:
    """User-visible commentary without a recipient (a preamble before tool calls)."""

    text: str
    tokens: tuple[int, ...] = ()


@dataclass
class ToolCallBegin:
    recipient: str  # e.g. "functions.get_weather" or "python"
    channel: Optional[str]
    content_type: Optional[str]
    known: bool  # False: not among the declared tools (the caller should answer with an error)
    tokens: tuple[int, ...] = ()


@dataclass
class ToolCallDelta:
    text: str
    tokens: tuple[int, ...] = ()


@dataclass
class ToolCallEnd:
    recipient: str
    arguments: str
    channel: Optional[str]
    known: bool
    tokens: tuple[int, ...] = ()


@dataclass
class MessageEnd:
    channel: Optional[str]
    recipient: Optional[str]
    stop: str  # "end" | "return" | "call" | "truncated"
    text: str = ""
    message_tokens: tuple[int, ...] = ()  # the whole message from <|start|> through its stop token
    tokens: tuple[int, ...] = ()


@dataclass
class Done:
    reason: str  # "stop" | "tool_call" | "length"
    tokens: tuple[int, ...] = ()


Event = Union[MessageBegin, ReasoningDelta, TextDelta, PreambleDelta, ToolCallBegin, ToolCallDelta,
              ToolCallEnd, MessageEnd, Done]
TEXT_EVENTS = (ReasoningDelta, TextDelta, PreambleDelta, ToolCallDelta)
