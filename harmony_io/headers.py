"""Reading one message header (the tokens between `<|start|>` and `<|message|>`) and its recipient.

A header is read twice: by openai-harmony's StreamableParser (a fresh one per message, fed only that
header) and by our own reading of its tokens. The library silently turns `<|channel|>a<|channel|>b`,
`final <|constrain|>json`, stray header words and glued `functions.fjson` into recipients;
`interpret_header` repairs those from our reading and validates the recipient against the declared
tools (`RecipientPolicy`). The words themselves (channels, content types, roles, built-ins) are
grammar.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from openai_harmony import HarmonyEncoding, Role, StreamableParser

from .grammar import (
    ASSISTANT,
    BUILTIN_TOOLS,
    CHANNELS,
    CONSTRAIN_MARK,
    CONTENT_TYPE_WORDS,
    ROLE_NAMES,
    function_recipient,
)
from .tokens import CHANNEL, CONSTRAIN, MESSAGE, START

_RECIPIENT = re.compile(r"^[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*$")
_RECIPIENT_CHARS = re.compile(r"^[\w.\-]*$")
_TO = re.compile(r"\bto=(\S+)")


@dataclass
class Header:
    channel: Optional[str]
    recipient: Optional[str]
    content_type: Optional[str]
    valid: bool  # looked like a harmony header at all


def _split_header(tokens: list[int], decode: Callable[[list[int]], str]) -> tuple[str, list[str], list[str]]:
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


def own_header_reading(tokens: list[int], decode: Callable[[list[int]], str]) -> Header:
    """Our reading of a header's tokens (everything between <|start|> and <|message|>).

    It looks like a header if it has a <|channel|>, or if its role part is empty or only
    `assistant` / `to=...` words; anything else (free text) is content that lacked a header.
    """
    role_text, channel_texts, constrain_texts = _split_header(tokens, decode)
    words = role_text.replace("to=", " to=").split()
    looks = bool(channel_texts) or all(w == ASSISTANT or w.startswith("to=") for w in words)
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
        if rest and rest[-1] in CONTENT_TYPE_WORDS:
            content_type = rest[-1]
    for text in constrain_texts:
        if text.strip():
            content_type = CONSTRAIN_MARK + text.strip()
    return Header(channel, recipient, content_type, looks)


def library_header_reading(enc: HarmonyEncoding, tokens: list[int], first: bool) -> Optional[Header]:
    """openai-harmony's reading of a header (None if it rejects it).

    `first`: the message's `<|start|>assistant` was the prompt's (so the role is already known).
    """
    try:
        if first:
            p = StreamableParser(enc, Role.ASSISTANT, strict=False)
        else:
            p = StreamableParser(enc, None, strict=False)
            p.process(START)
        for t in tokens:
            p.process(t)
        p.process(MESSAGE)
        return Header(p.current_channel, p.current_recipient, p.current_content_type, True)
    except Exception:  # noqa: BLE001 - the library raises on malformed headers
        return None


def header_words_ok(segment: str, text: str, complete: bool) -> bool:
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
            ok = w in CHANNELS or (last_open and any(c.startswith(w) for c in CHANNELS))
        elif segment == "constrain":
            ok = i == 0 and _RECIPIENT_CHARS.match(w) is not None
        else:
            options = CONTENT_TYPE_WORDS + ((ASSISTANT,) if segment == "role" else ())
            ok = w in options or (last_open and any(o.startswith(w) for o in options + ("to=",)))
        if not ok:
            return False
    return True


def header_length(tokens: list[int], token_bytes: Callable[[int], bytes], is_control: Callable[[int], bool]) -> int:
    """How many leading header tokens are header words; the rest is text that lacked <|message|>.

    Works on bytes across token boundaries: a channel name the tokenizer splits
    (`comment` + `ary`) is one header word, and the whitespace after the header is header too.
    """
    segment, text, best = "role", b"", 0
    for k, t in enumerate(tokens):
        if t in (CHANNEL, CONSTRAIN):
            if not header_words_ok(segment, text.decode("utf-8", "replace"), complete=True):
                return best
            segment, text = ("channel" if t == CHANNEL else "constrain"), b""
            best = k + 1
            continue
        if is_control(t):
            continue
        text += token_bytes(t)
        decoded = text.decode("utf-8", "replace")
        if header_words_ok(segment, decoded, complete=True):
            best = k + 1
        elif not header_words_ok(segment, decoded, complete=False):
            return best
    return best


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
        for suffix in CONTENT_TYPE_WORDS:  # glued content type: functions.get_weatherjson
            if r.endswith(suffix) and self.declared is not None and r not in self.declared:
                stripped = r[: -len(suffix)]
                if stripped in self.declared:
                    r = stripped
        if self.declared is not None and r not in self.declared and function_recipient(r) in self.declared:
            r = function_recipient(r)  # bare function name
        if not _RECIPIENT.match(r):
            return None, False
        if self.declared is None:
            return r, True
        if r in self.declared or (r.split(".", 1)[0] in self.declared and "." not in r.split(".", 1)[0]):
            return r, True
        # unknown: a call to something undeclared if it has a namespace form; else a stray word
        return (r, False) if "." in r or r in BUILTIN_TOOLS else (None, False)


def interpret_header(own: Header, lib: Optional[Header], policy: RecipientPolicy
                     ) -> tuple[Optional[str], Optional[str], Optional[str], bool]:
    """(channel, recipient, content type, recipient known?) of a header both readers read.

    The library's reading wins where it is sound; ours repairs what it misreads.
    """
    if lib is None:
        channel, recipient, ctype = own.channel, own.recipient, own.content_type
    else:
        channel, recipient, ctype = lib.channel, lib.recipient, lib.content_type
        if recipient and recipient.startswith("<|channel|>"):  # a<|channel|>b misread as recipient
            channel, recipient = own.channel, own.recipient
        elif recipient and recipient.startswith(CONSTRAIN_MARK):  # `final <|constrain|>json`
            ctype, recipient = recipient, own.recipient
        if own.channel and channel != own.channel:
            channel = own.channel
        if recipient and own.recipient is None and not policy.declares(recipient):
            recipient = None  # no `to=`: the library made a stray header word (`final Hello`) a recipient
    recipient, known = policy.resolve(recipient)
    return channel, recipient, ctype, known
