"""Structured outputs for gpt-oss: which tokens may come next, following the harmony the model writes.

A request may constrain the final answer to JSON (a schema, or any JSON object), the arguments of
calls to strict functions, and whether the turn must end in a call (`tool_choice` "required" or a
named function). `HarmonyConstraint` follows one generated sequence token by token:

    <|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final<|message|>{JSON}<|return|>
    <|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{ARGS}<|call|>

- headers: only the messages the request allows (a grammar over harmony's own control tokens, both
  places harmony puts `to=`); which one the model chose is read back from the header tokens;
- reasoning (and preambles, free answers, free call arguments): any text, but only the message's
  own end token among the control tokens -- a constant mask, nothing to compute. A model that would
  end its turn at once cannot: `<|return|>` is not allowed until a valid answer is there;
- JSON bodies: llguidance's mask for the schema, and once the document is complete only the stop
  token (`<|return|>` after an answer, `<|call|>` after arguments);
- between messages: only `<|start|>`.

Masks are packed bitmasks (token_masks.py). Constant masks are shared read-only arrays, the same
object every time, so an integrator may keep a device copy of each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import llguidance
import numpy as np

from . import token_masks as g
from .errors import HarmonyIOError
from .parser import own_header_reading
from .render import function_recipient
from .tokens import CALL, CHANNEL, CONSTRAIN, END, MESSAGE, NAMES, RETURN, START

JSON_OBJECT: dict = {"type": "object"}  # `response_format: json_object`: any JSON object
TOOL_CHOICES = ("auto", "none", "required")
_NAME = re.compile(r"^[A-Za-z0-9_\-.]{1,128}$")


class ConstraintViolation(RuntimeError):
    """A token the constraint's mask did not allow was fed to it: the caller did not apply the mask."""


@dataclass(frozen=True)
class OutputConstraint:
    """What a request constrains.

    answer_schema: the final answer's JSON schema (`JSON_OBJECT` for json_object); None: free text.
    functions: every declared function -> its strict argument schema, or None (arguments free).
    tool_choice: "auto" | "none" | "required" | a declared function's name (that call, and only it).
    builtin_tools: recipients of declared built-ins (`python`): their calls stay free text.
    max_reasoning_tokens: after this many reasoning and preamble tokens `<|end|>` is forced and no new
    analysis or preamble message may start (None: unlimited), so a turn keeps room for its answer or call.
    """

    answer_schema: Optional[dict] = None
    functions: Mapping[str, Optional[dict]] = field(default_factory=dict)
    tool_choice: str = "auto"
    builtin_tools: tuple[str, ...] = ()
    max_reasoning_tokens: Optional[int] = None

    def __post_init__(self) -> None:
        for name in self.functions:
            if not _NAME.match(name):
                raise HarmonyIOError(f"invalid function name {name!r}")
        if self.tool_choice not in TOOL_CHOICES and self.tool_choice not in self.functions:
            raise HarmonyIOError(f"tool_choice names {self.tool_choice!r}, which is not a declared function")
        if self.tool_choice == "required" and not (self.functions or self.builtin_tools):
            raise HarmonyIOError("tool_choice 'required' needs at least one tool")
        if self.max_reasoning_tokens is not None and self.max_reasoning_tokens < 0:
            raise HarmonyIOError("max_reasoning_tokens must be >= 0")

    @property
    def constrains_anything(self) -> bool:
        """False when decoding with this constraint would allow exactly what the model does anyway."""
        return (self.answer_schema is not None or self.tool_choice != "auto"
                or any(s is not None for s in self.functions.values())
                or self.max_reasoning_tokens is not None)

    # the messages it allows ----------------------------------------------------------------------

    @property
    def call_recipients(self) -> tuple[str, ...]:
        if self.tool_choice == "none":
            return ()
        if self.tool_choice not in TOOL_CHOICES:
            return (function_recipient(self.tool_choice),)
        return tuple(function_recipient(n) for n in self.functions) + tuple(self.builtin_tools)

    @property
    def final_allowed(self) -> bool:
        return self.tool_choice in ("auto", "none")

    @property
    def preamble_allowed(self) -> bool:
        return bool(self.call_recipients)

    def schema_for(self, recipient: str) -> Optional[dict]:
        name = recipient[len("functions."):] if recipient.startswith("functions.") else None
        return self.functions.get(name) if name is not None else None


def output_constraint(response_format: Any = None, tools: Optional[Sequence[dict]] = None, tool_choice: Any = None,
                      *, builtin_tools: Sequence[str] = ()) -> Optional[OutputConstraint]:
    """The constraint an OpenAI request asks for, or None when it asks for none.

    Accepts both APIs' shapes: Chat's `response_format` / Responses' `text.format` (`{"type": "text" |
    "json_object" | "json_schema", ...}`, the schema nested under `json_schema` or flat), tools as
    `{"type": "function", "function": {...}}` or flat, and `tool_choice` as "auto" / "none" /
    "required" / `{"type": "function", "function": {"name": N}}` / `{"type": "function", "name": N}`.
    A json_schema answer is constrained whether or not it says `strict` (a valid answer is what the
    caller wants either way); a function's arguments only when the function says `strict: true`.
    """
    answer = _answer_schema(response_format)
    functions: dict[str, Optional[dict]] = {}
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue  # other tool types are the caller's to refuse or drop
        spec = tool.get("function", tool)
        name = spec.get("name")
        if not isinstance(name, str):
            raise HarmonyIOError(f"tools[{i}]: a function needs a name")
        strict = spec.get("strict") is True
        params = spec.get("parameters")
        functions[name] = (params if isinstance(params, dict) else {"type": "object", "properties": {}}) if strict else None
    choice = _tool_choice(tool_choice)
    spec = OutputConstraint(answer_schema=answer, functions=functions, tool_choice=choice,
                            builtin_tools=tuple(builtin_tools))
    return spec if spec.constrains_anything else None


def _answer_schema(fmt: Any) -> Optional[dict]:
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise HarmonyIOError("response_format must be an object")
    kind = fmt.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return dict(JSON_OBJECT)
    if kind == "json_schema":
        inner = fmt.get("json_schema", fmt)
        schema = inner.get("schema") if isinstance(inner, dict) else None
        if not isinstance(schema, dict):
            raise HarmonyIOError("response_format json_schema needs a `schema` object")
        return schema
    raise HarmonyIOError(f"response_format type {kind!r} is not supported (text, json_object, json_schema)")


def _tool_choice(choice: Any) -> str:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise HarmonyIOError(f"tool_choice must be one of {', '.join(TOOL_CHOICES)} or a function, got {choice!r}")
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name") if "function" in choice else choice.get("name")
        if isinstance(name, str):
            return name
    raise HarmonyIOError("tool_choice must be 'auto', 'none', 'required' or {'type': 'function', ...} with a name")


def header_grammar(spec: OutputConstraint, *, first: bool, analysis: bool) -> str:
    """The headers `spec` allows, from just after `<|start|>` through `<|message|>` (Lark).

    The first message's `<|start|>assistant` is the prompt's; later ones write `assistant` themselves.
    """
    q = g.lark_string
    channel, constrain, message = NAMES[CHANNEL], NAMES[CONSTRAIN], NAMES[MESSAGE]
    alts = []
    if analysis:
        alts.append(f'{channel} "analysis" {message}')
    if spec.final_allowed:
        alts.append(f'{channel} "final" {message}')
    if spec.preamble_allowed and analysis:  # free messages: while the budget lasts
        alts.append(f'{channel} "commentary" {message}')
    for rec in spec.call_recipients:
        builtin = rec in spec.builtin_tools
        json_ct = f'(" " {constrain} "json" | " json")'
        ctype = f'(" " {constrain} "json" | " json" | " code")?' if builtin else json_ct
        if spec.schema_for(rec) is None and not builtin:
            ctype = f"{json_ct}?"
        channels = '("analysis" | "commentary")' if builtin else '"commentary"'
        to = q(f" to={rec}")
        alts.append(f"{channel} {channels} {to} {ctype} {message}")  # <|channel|>commentary to=R ...
        alts.append(f"{to} {channel} {channels} {ctype} {message}")  # to=R<|channel|>commentary ...
    if not alts:
        raise HarmonyIOError("the request allows no message at all")
    start = "start: " + ('"assistant" ' if not first else "") + "header\n"
    return start + "header: " + "\n      | ".join(alts) + "\n"


# constant masks: text tokens plus the message's own end
REASONING_MASK = g.mask_of([END], text=True)  # analysis and preambles
FREE_ANSWER_MASK = g.mask_of([RETURN], text=True)
FREE_CALL_MASK = g.mask_of([CALL], text=True)
END_MASK = g.mask_of([END])  # the reasoning budget is spent
START_MASK = g.mask_of([START])  # between messages


class HarmonyConstraint:
    """One sequence's constraint: `feed(token)` every generated token, `fill_mask`/`next_mask` before
    sampling the next. Built off the decode thread (compiling a new schema takes milliseconds)."""

    def __init__(self, spec: OutputConstraint, grammars: g.GrammarCache = g.GRAMMARS):
        self.spec = spec
        self._grammars = grammars
        self._decode_bytes = g.encoding()._inner.decode_bytes
        # everything that can be compiled is compiled now, so feed() never compiles
        self._headers = {(first, analysis): grammars.matcher(header_grammar(spec, first=first, analysis=analysis))
                         for first in (True, False) for analysis in (True, False)
                         if analysis or spec.max_reasoning_tokens is not None}
        self._answer = (grammars.matcher(g.json_grammar(spec.answer_schema, NAMES[RETURN]))
                        if spec.answer_schema is not None and spec.final_allowed else None)
        self._arguments = {rec: grammars.matcher(g.json_grammar(spec.schema_for(rec), NAMES[CALL]))
                           for rec in spec.call_recipients if spec.schema_for(rec) is not None}
        self.reasoning_tokens = 0
        self.message: Optional[str] = None  # "reasoning" | "preamble" | "answer" | "call" while in a body
        self.recipient: Optional[str] = None
        self.done = False
        self._header_tokens: list[int] = []
        self._begin_header(first=True)

    # -- state changes --------------------------------------------------------------------------

    def _analysis_allowed(self) -> bool:
        budget = self.spec.max_reasoning_tokens
        return budget is None or self.reasoning_tokens < budget

    def _begin_header(self, first: bool) -> None:
        key = (first, self._analysis_allowed())
        self._matcher: Optional[llguidance.LLMatcher] = self._headers[key]
        self._matcher.reset()
        self._constant: Optional[np.ndarray] = None
        self._state = "header"
        self._header_tokens = []

    def _begin_body(self) -> None:
        decode = lambda ids: b"".join(bytes(self._decode_bytes([t])) for t in ids if t < g.FIRST_SPECIAL).decode(
            "utf-8", "replace")
        head = own_header_reading(self._header_tokens, decode)
        self.recipient = head.recipient
        self._matcher, self._constant = None, None
        if head.recipient is not None:
            self.message = "call"
            self._matcher = self._arguments.get(head.recipient)
            self._constant = FREE_CALL_MASK if self._matcher is None else None
        elif head.channel == "analysis":
            self.message = "reasoning"
            self._constant = REASONING_MASK if self._analysis_allowed() else END_MASK
        elif head.channel == "commentary":
            self.message = "preamble"
            self._constant = REASONING_MASK if self._analysis_allowed() else END_MASK
        else:
            self.message = "answer"
            self._matcher = self._answer
            self._constant = FREE_ANSWER_MASK if self._matcher is None else None
        self._state = "json" if self._matcher is not None else "text"

    def feed(self, token: int) -> None:
        """Advance by one generated token; raises ConstraintViolation for a token the mask forbade."""
        token = int(token)
        if self.done:
            raise ConstraintViolation(f"token {token} after the turn ended")
        if self._state == "header":
            if not self._matcher.consume_token(token):
                raise ConstraintViolation(f"token {token} is not allowed in this header: {self._matcher.get_error()}")
            if token == MESSAGE:
                self._begin_body()
            else:
                self._header_tokens.append(token)
        elif self._state == "between":
            if token != START:
                raise ConstraintViolation(f"token {token} between messages (only <|start|> is allowed)")
            self._begin_header(first=False)
        elif self._state == "json":
            if not self._matcher.consume_token(token):
                raise ConstraintViolation(f"token {token} breaks the JSON: {self._matcher.get_error()}")
            if token in (RETURN, CALL):
                self.done = True
        else:  # free text with a constant mask
            if not g.allows(self._constant, token):
                raise ConstraintViolation(f"token {token} is not allowed in this {self.message}")
            if self.message in ("reasoning", "preamble") and token != END:
                self.reasoning_tokens += 1
                if not self._analysis_allowed():
                    self._constant = END_MASK
            if token == END:
                self._state, self.message, self.recipient = "between", None, None
                self._constant = START_MASK
            elif token in (RETURN, CALL):
                self.done = True

    # -- masks ----------------------------------------------------------------------------------

    def fill_mask(self, out: np.ndarray) -> bool:
        """Write the next token's mask into `out` (a contiguous int32 row of `token_masks.MASK_WORDS`);
        False (and `out` untouched) when nothing is constrained any more (the turn ended)."""
        if self.done:
            return False
        if self._constant is not None:
            out[:] = self._constant
        else:
            g.fill_from(self._matcher, out)
        return True

    def next_mask(self) -> Optional[np.ndarray]:
        """The next token's mask; a constant one is a shared read-only array. None once the turn ended."""
        if self.done:
            return None
        if self._constant is not None:
            return self._constant
        out = g.empty_mask()
        g.fill_from(self._matcher, out)
        return out

    @property
    def state(self) -> str:
        """"header" | "between" | "json" | "text" | "done" (for logs and tests)."""
        return "done" if self.done else self._state
