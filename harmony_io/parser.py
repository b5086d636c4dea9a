"""A streaming harmony parser that never raises on model output.

Feed it only generated tokens (the prompt ended with `<|start|>assistant`). It tracks message
boundaries itself from token ids (`<|start|>`, `<|message|>`, stop tokens), so each content token
costs a dict lookup and an incremental UTF-8 decode; it never calls openai-harmony's per-token
accessors, which are O(message length). Each header is interpreted by openai_harmony's
StreamableParser (a fresh one per message, fed only that header), then checked: the library
silently turns `<|channel|>a<|channel|>b`, `final <|constrain|>json`, stray header words and glued
`functions.fjson` into recipients. Those are repaired from our own reading of the header tokens,
and recipients are validated against the declared tools.

Every event carries the input token ids it accounts for: every text token of the input appears in
exactly one event, in order (control tokens in none). Text is never dropped: a header that turns out
not to be one (no `<|message|>`, text before any header) is emitted as content. Header words never
are: a header cut short keeps its words (a channel name split across tokens, `comment`+`ary`, a `to=`
recipient) out of the text, and a header after `<|end|>` without `<|start|>assistant` still opens an
assistant message, recorded with the `<|start|>assistant` the model left out so its exact history
renders well-formed. A tool call stays a tool call.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Union

from openai_harmony import Role, StreamableParser

from .tokens import CALL, CHANNEL, CONSTRAIN, END, ENDOFTEXT, MESSAGE, RETURN, START, VOCAB_SIZE, assistant_header
from .vocab import encoding

KNOWN_CHANNELS = ("analysis", "commentary", "final")
_RECIPIENT = re.compile(r"^[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*$")
_TO = re.compile(r"\bto=(\S+)")


# -- events ------------------------------------------------------------------------------------


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


# -- header interpretation -----------------------------------------------------------------------


@dataclass
class Header:
    channel: Optional[str]
    recipient: Optional[str]
    content_type: Optional[str]
    valid: bool  # looked like a harmony header at all


def _split_header(tokens: list[int], decode) -> tuple[str, list[str], list[str]]:
    """(role part text, channel segment texts, constrain segment texts)."""
    role: list[int] = []
    channels: list[list[int]] = []
    constrains: list[list[int]] = []
    cur = role
    for t in tokens:
        if t == CHANNEL:
            channels.append([])
            cur = channels[-1]
        elif t == CONSTRAIN:
            constrains.append([])
            cur = constrains[-1]
        else:
            cur.append(t)
    return decode(role), [decode(c) for c in channels], [decode(c) for c in constrains]


def own_header_reading(tokens: list[int], decode) -> Header:
    """Our reading of a header's tokens (everything between <|start|> and <|message|>).

    It looks like a header if it has a <|channel|>, or if its role part is empty or only
    `assistant` / `to=...` words; anything else (free text) is content that lacked a header.
    """
    role_text, channel_texts, constrain_texts = _split_header(tokens, decode)
    words = role_text.replace("to=", " to=").split()
    looks = bool(channel_texts) or all(w == "assistant" or w.startswith("to=") for w in words)
    recipient = None
    for text in [role_text] + channel_texts:
        m = _TO.search(text)
        if m:
            recipient = m.group(1)
            break
    channel = None
    content_type = None
    for text in channel_texts:
        w = text.replace("to=", " to=").split()
        if w and not w[0].startswith("to="):
            channel = w[0]  # the last <|channel|> wins: the model's final choice
        rest = [x for x in w[1:] if not x.startswith("to=")]
        if rest and rest[-1] in ("json", "code"):
            content_type = rest[-1]
    for text in constrain_texts:
        if text.strip():
            content_type = "<|constrain|>" + text.strip()
    return Header(channel, recipient, content_type, looks)


_CONTENT_TYPE_WORDS = ("json", "code")
_RECIPIENT_CHARS = re.compile(r"^[\w.\-]*$")


def _header_words_ok(segment: str, text: str, complete: bool) -> bool:
    """Whether `text` (one header segment) consists of header words only.

    Segments: `role` (before the first <|channel|>: `assistant`, `to=R`, a content type), `channel`
    (a known channel name, then `to=R` or a content type), `constrain` (one content type word).
    With `complete=False` the last word may still be growing (`comment` on its way to `commentary`).
    """
    words = text.split()
    for i, w in enumerate(words):
        last_open = not complete and i == len(words) - 1 and not text[-1:].isspace()
        if w.startswith("to="):
            ok = _RECIPIENT_CHARS.match(w[3:]) is not None
        elif segment == "channel" and i == 0:
            ok = w in KNOWN_CHANNELS or (last_open and any(c.startswith(w) for c in KNOWN_CHANNELS))
        elif segment == "constrain":
            ok = i == 0 and _RECIPIENT_CHARS.match(w) is not None
        else:
            options = _CONTENT_TYPE_WORDS + (("assistant",) if segment == "role" else ())
            ok = w in options or (last_open and any(o.startswith(w) for o in options + ("to=",)))
        if not ok:
            return False
    return True


ROLE_NAMES = ("assistant", "user", "system", "developer")  # authors, never tools


class RecipientPolicy:
    """Validates recipients against the declared tools (None: accept any well-formed name).

    A declared built-in namespace covers its calls: `browser` declares `browser.search`.
    """

    def __init__(self, tools: Optional[Iterable[str]]):
        self.declared = None if tools is None else set(tools)

    def declares(self, recipient: str) -> bool:
        return self.declared is not None and self.resolve(recipient)[1]

    def resolve(self, recipient: Optional[str]) -> tuple[Optional[str], bool]:
        """(normalized recipient or None if it is not a recipient at all, known?)."""
        if not recipient:
            return None, False
        r = recipient.strip()
        if "<|" in r or not r or r in ROLE_NAMES:
            return None, False
        for suffix in ("json", "code"):  # glued content type: functions.get_weatherjson
            if r.endswith(suffix) and self.declared is not None and r not in self.declared:
                stripped = r[: -len(suffix)]
                if stripped in self.declared:
                    r = stripped
        if self.declared is not None and r not in self.declared and f"functions.{r}" in self.declared:
            r = f"functions.{r}"  # bare function name
        if not _RECIPIENT.match(r):
            return None, False
        if self.declared is None:
            return r, True
        if r in self.declared or (r.split(".", 1)[0] in self.declared and "." not in r.split(".", 1)[0]):
            return r, True
        # unknown: a call to something undeclared if it has a namespace form; else a stray word
        return (r, False) if "." in r or r in ("python", "browser") else (None, False)


# -- the parser ----------------------------------------------------------------------------------


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

    def _library_header(self) -> Optional[Header]:
        """openai-harmony's reading of the header (None if it rejects it)."""
        if not self.use_library:
            return None
        try:
            if self.first:
                p = StreamableParser(self.enc, Role.ASSISTANT, strict=False)
            else:
                p = StreamableParser(self.enc, None, strict=False)
                p.process(START)
            for t in self.header_tokens:
                p.process(t)
            p.process(MESSAGE)
            return Header(p.current_channel, p.current_recipient, p.current_content_type, True)
        except Exception:  # noqa: BLE001 - the library raises on malformed headers
            return None

    def _interpret_header(self, own: Header) -> None:
        lib = self._library_header()
        if lib is None:
            channel, recipient, ctype = own.channel, own.recipient, own.content_type
        else:
            channel, recipient, ctype = lib.channel, lib.recipient, lib.content_type
            if recipient and recipient.startswith("<|channel|>"):  # a<|channel|>b misread as recipient
                channel, recipient = own.channel, own.recipient
            elif recipient and recipient.startswith("<|constrain|>"):  # `final <|constrain|>json`
                ctype, recipient = recipient, own.recipient
            if own.channel and channel != own.channel:
                channel = own.channel
            if recipient and own.recipient is None and not self.policy.declares(recipient):
                recipient = None  # no `to=`: the library made a stray header word (`final Hello`) a recipient
        recipient, known = self.policy.resolve(recipient)
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

    def _header_length(self) -> int:
        """How many leading header tokens are header words; the rest is text that lacked <|message|>.

        Works on bytes across token boundaries: a channel name the tokenizer splits
        (`comment` + `ary`) is one header word, and the whitespace after the header is header too.
        """
        segment, text, best = "role", b"", 0
        for k, t in enumerate(self.header_tokens):
            if t in (CHANNEL, CONSTRAIN):
                if not _header_words_ok(segment, text.decode("utf-8", "replace"), complete=True):
                    return best
                segment, text = ("channel" if t == CHANNEL else "constrain"), b""
                best = k + 1
                continue
            if self._is_control(t):
                continue
            text += self._token_bytes(t)
            decoded = text.decode("utf-8", "replace")
            if _header_words_ok(segment, decoded, complete=True):
                best = k + 1
            elif not _header_words_ok(segment, decoded, complete=False):
                return best
        return best

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
            # header never reached <|message|> (the library drops such messages): salvage it
            own = own_header_reading(self.header_tokens, self._decode)
            n = self._header_length() if own.valid else 0
            head = own_header_reading(self.header_tokens[:n], self._decode)  # the header words only
            channel = head.channel if head.channel in KNOWN_CHANNELS else None
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


FIRST_SPECIAL = 199998  # o200k_harmony: every id from here on is a control/reserved token
REPLACEMENT = "\ufffd".encode()
_STOPS = {END: "end", RETURN: "return", CALL: "call", ENDOFTEXT: "truncated"}
_DELTAS = {"reasoning": ReasoningDelta, "text": TextDelta, "preamble": PreambleDelta, "tool": ToolCallDelta}


def _kind(channel: Optional[str], recipient: Optional[str]) -> str:
    if recipient is not None:
        return "tool"
    if channel == "analysis":
        return "reasoning"
    if channel == "commentary":
        return "preamble"
    return "text"  # final, unknown channel or no channel: show it as the answer
