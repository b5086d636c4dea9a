"""A streaming harmony parser that never raises on model output: the state machine.

Feed it only generated tokens (the prompt ended with `<|start|>assistant`). It tracks message
boundaries itself from token ids (`<|start|>`, `<|message|>`, stop tokens), so each content token
costs a dict lookup and an incremental UTF-8 decode; it never calls openai-harmony's per-token
accessors, which are O(message length). Each header is read by headers.py (openai-harmony's
reading, repaired from our own, the recipient validated against the declared tools); what it emits
are events.py's events.

Every event carries the input token ids it accounts for: every text token of the input appears in
exactly one event, in order (control tokens in none). Text is not dropped: a header that turns out
not to be one (no `<|message|>` before `<|return|>` or the end, text before any header) is emitted as
content -- the model put its answer there (openai-harmony's non-strict reading agrees:
`<|channel|>commentary Hello<|end|>` is commentary "Hello"). The exception is a header the model
abandoned, closed by `<|end|>` before any `<|message|>` after going wrong as a header: doubled
(`<|channel|>commentary to=assistant<|channel|>commentary?<|end|>`), a channel that is none
(`<|channel|>??<|end|>`, `<|channel|>commentary?commentary?<|end|>`), free text where a content type
belongs (`... <|constrain|>write: edit the file<|end|>`), or a call's header (a call needs its
`<|message|>` and `<|call|>`). gpt-oss then starts over with a well-formed message. That is neither text
nor a call: it is recorded (MessageEnd, so exact history keeps the model's tokens), nothing is shown. Header words never are: a header cut short keeps its words (a channel name split across tokens, `comment`+`ary`, a `to=`
recipient) out of the text, and a header after `<|end|>` without `<|start|>assistant` still opens an
assistant message, recorded with the `<|start|>assistant` the model left out so its exact history
renders well-formed. A tool call stays a tool call.
"""

from __future__ import annotations

import codecs
from typing import Iterable, Optional

from .events import (
    Done,
    Event,
    MessageBegin,
    MessageEnd,
    PreambleDelta,
    ReasoningDelta,
    TextDelta,
    ToolCallBegin,
    ToolCallDelta,
    ToolCallEnd,
)
from .grammar import ANALYSIS, CHANNELS, COMMENTARY, CONTENT_TYPE_WORDS
from .headers import (
    Header,
    RecipientPolicy,
    header_length,
    interpret_header,
    library_header_reading,
    own_header_reading,
)
from .tokens import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    ENDOFTEXT,
    FIRST_SPECIAL,
    MESSAGE,
    RETURN,
    START,
    VOCAB_SIZE,
    assistant_header,
)
from .vocab import encoding


class StreamParser:
    """`feed(token) -> events`, `finish() -> events`. Never raises on any token sequence."""

    def __init__(self, tools: Optional[Iterable[str]] = None, *, validate_with_library: bool = True):
        self.enc = encoding()
        self.policy = RecipientPolicy(tools)
        self.use_library = validate_with_library
        self._bytes: dict[int, bytes] = {}
        self._start_tokens = tuple(assistant_header())
        self._reset_message(first=True)
        self.state = "header"
        self._done_emitted = False  # the last event was a Done and no message started since

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _is_control(t: int) -> bool:
        return FIRST_SPECIAL <= t < VOCAB_SIZE or t < 0

    def _token_bytes(self, t: int) -> bytes:
        b = self._bytes.get(t)
        if b is None and t >= VOCAB_SIZE:
            return REPLACEMENT  # an id outside the vocabulary: an invalid token, shown as openai-harmony shows it
        if b is None:
            try:
                b = bytes(self.enc._inner.decode_bytes([t]))
            except Exception:  # noqa: BLE001 - an id outside the vocabulary carries no text
                b = b""
            self._bytes[t] = b
        return b

    def _decode(self, tokens: list[int]) -> str:
        return b"".join(self._token_bytes(t) for t in tokens if not self._is_control(t)).decode("utf-8", "replace")

    def _reset_message(self, first: bool) -> None:
        self.first = first
        self.header_tokens: list[int] = []
        self.message_tokens: list[int] = list(self._start_tokens) if first else []
        self.kind: Optional[str] = None  # "reasoning" | "text" | "preamble" | "tool"
        self.channel: Optional[str] = None
        self.recipient: Optional[str] = None
        self.content_type: Optional[str] = None
        self.known = False
        self.text_parts: list[str] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.pending_tokens: list[int] = []

    def _interpret_header(self, own: Header) -> None:
        lib = library_header_reading(self.enc, self.header_tokens, self.first) if self.use_library else None
        channel, recipient, ctype, known = interpret_header(own, lib, self.policy)
        self.channel, self.recipient, self.content_type, self.known = channel, recipient, ctype, known
        self.kind = _kind(channel, recipient)

    def _delta(self, text: str, tokens: tuple[int, ...]) -> Event:
        self.text_parts.append(text)
        return _DELTAS[self.kind or "text"](text, tokens)

    def _content_token(self, t: int) -> list[Event]:
        self.pending_tokens.append(t)
        text = self.decoder.decode(self._token_bytes(t))
        if not text:
            return []  # an incomplete UTF-8 sequence: wait for the rest
        toks, self.pending_tokens = tuple(self.pending_tokens), []
        return [self._delta(text, toks)]

    def _flush(self) -> list[Event]:
        text = self.decoder.decode(b"", final=True)
        if not text and not self.pending_tokens:
            return []
        toks, self.pending_tokens = tuple(self.pending_tokens), []
        return [self._delta(text, toks)]

    def _header_as_content(self, n: int) -> list[Event]:
        """Emit a header's text as content (for text that never got a real header).

        The first `n` header tokens are header words (`<|channel|>commentary Hello` cut before
        <|message|>: the channel name, even when split across tokens); the rest is content.
        """
        header_text = tuple(t for t in self.header_tokens[:n] if not self._is_control(t))
        events: list[Event] = [MessageBegin(self.channel, self.recipient, self.content_type, header_text)]
        if self.kind == "tool":
            events.append(ToolCallBegin(self.recipient, self.channel, self.content_type, self.known))
        for t in self.header_tokens[n:]:
            if not self._is_control(t):
                events += self._content_token(t)
        return events

    def _begin_content(self) -> list[Event]:
        own = own_header_reading(self.header_tokens, self._decode)
        self.state = "content"
        if not own.valid:
            self.channel = self.recipient = self.content_type = None
            self.kind, self.known = "text", False
            return self._header_as_content(0)
        self._interpret_header(own)
        header_text = tuple(t for t in self.header_tokens if not self._is_control(t))
        events: list[Event] = [MessageBegin(self.channel, self.recipient, self.content_type, header_text)]
        if self.kind == "tool":
            events.append(ToolCallBegin(self.recipient, self.channel, self.content_type, self.known))
        return events

    def _end_message(self, stop: str) -> list[Event]:
        events: list[Event] = []
        if self.state == "header":
            if not self.header_tokens:
                return events  # a bare stop token: no message to close
            if stop == "end" and self._abandoned():  # the model starts over (module docstring): recorded, not shown
                words = tuple(t for t in self.header_tokens if not self._is_control(t))
                return [MessageBegin(None, None, None, words), MessageEnd(None, None, stop, "", tuple(self.message_tokens))]
            # header never reached <|message|> (the library drops such messages): salvage it
            own = own_header_reading(self.header_tokens, self._decode)
            n = header_length(self.header_tokens, self._token_bytes, self._is_control) if own.valid else 0
            head = own_header_reading(self.header_tokens[:n], self._decode)  # the header words only
            channel = head.channel if head.channel in CHANNELS else None
            recipient, known = self.policy.resolve(head.recipient)
            ctype = head.content_type if recipient is not None else None
            self.channel, self.recipient, self.content_type, self.known = channel, recipient, ctype, known
            self.kind = _kind(channel, recipient)
            events += self._header_as_content(n)
        events += self._flush()
        text = "".join(self.text_parts)
        if self.kind == "tool" and self.recipient is not None:
            events.append(ToolCallEnd(self.recipient, text, self.channel, self.known))
        events.append(MessageEnd(self.channel, self.recipient, stop, text, tuple(self.message_tokens)))
        return events

    def _abandoned(self) -> bool:
        """Whether a header closed before `<|message|>` went wrong as a header (module docstring)."""
        tokens = self.header_tokens
        if tokens.count(CHANNEL) > 1:
            return True
        if CHANNEL in tokens:  # a channel that is none (`??`), or a channel word twice (`commentary?commentary?`)
            n = header_length(tokens, self._token_bytes, self._is_control)
            if own_header_reading(tokens[:n], self._decode).channel not in CHANNELS:
                return True
            if any(c in self._decode(tokens[n:]) for c in CHANNELS):
                return True
        if CONSTRAIN in tokens:
            after = self._decode(tokens[tokens.index(CONSTRAIN) + 1:]).split()
            if after[:1] != [] and (after[0] not in CONTENT_TYPE_WORDS or len(after) > 1):
                return True
        own = own_header_reading(tokens, self._decode)
        return own.valid and own.recipient is not None

    def _done(self, reason: str) -> Done:
        self._done_emitted = True
        return Done(reason)

    # -- public API -----------------------------------------------------------------------------

    def feed(self, token: int) -> list[Event]:
        """Events caused by one generated token. Never raises."""
        try:
            return self._feed(int(token))
        except Exception:  # noqa: BLE001 - last line of defence: a parser bug must not kill a chat
            return []

    def _feed(self, t: int) -> list[Event]:
        if self.state == "between":
            if t == START:
                self._reset_message(first=False)
                self.message_tokens.append(t)
                self.state, self._done_emitted = "header", False
                return []
            if t == ENDOFTEXT and not self._done_emitted:
                return [self._done("stop")]
            if self._is_control(t) and t not in (CHANNEL, MESSAGE):
                return []  # stray control token between messages
            # a header or text after a closed message without <|start|>assistant (vLLM's "unexpected
            # token"): an implicit assistant message. It is recorded with the <|start|>assistant the
            # model left out, so its exact history renders as a well-formed message.
            self._reset_message(first=True)
            self.state, self._done_emitted = "header", False
        self.message_tokens.append(t)
        if t in _STOPS:
            stop = _STOPS[t]
            events = self._end_message(stop)
            is_call = self.kind == "tool" and self.recipient is not None
            self.state = "between"
            if t in (RETURN, ENDOFTEXT):
                events.append(self._done("stop"))
            elif t == CALL:
                events.append(self._done("tool_call" if is_call else "stop"))
            return events
        if t == START:  # a new message while one is open: the open one was cut short
            self.message_tokens.pop()
            events = self._end_message("truncated") if (self.state == "content" or self.header_tokens) else []
            self._reset_message(first=False)
            self.message_tokens.append(t)
            self.state = "header"
            return events
        if self.state == "header":
            if t == MESSAGE:
                return self._begin_content()
            self.header_tokens.append(t)
            return []
        if self._is_control(t):
            return []  # stray control token inside content: no text
        return self._content_token(t)

    def finish(self, reason: str = "length") -> list[Event]:
        """Close whatever is open; Done(reason) unless the stream already ended with a Done."""
        try:
            events: list[Event] = []
            if self.state == "content" or (self.state == "header" and self.header_tokens):
                events += self._end_message("truncated")
                self.state = "between"
            elif self._done_emitted:
                return events
            events.append(self._done(reason))
            return events
        except Exception:  # noqa: BLE001
            return [Done(reason)]


REPLACEMENT = "\ufffd".encode()
_STOPS = {END: "end", RETURN: "return", CALL: "call", ENDOFTEXT: "truncated"}
_DELTAS = {"reasoning": ReasoningDelta, "text": TextDelta, "preamble": PreambleDelta, "tool": ToolCallDelta}


def _kind(channel: Optional[str], recipient: Optional[str]) -> str:
    if recipient is not None:
        return "tool"
    if channel == ANALYSIS:
        return "reasoning"
    if channel == COMMENTARY:
        return "preamble"
    return "text"  # final, unknown channel or no channel: show it as the answer
