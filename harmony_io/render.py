"""Rendering OpenAI chat-style conversations into harmony prompt tokens (through openai-harmony).

What this adds to the library:
- OpenAI chat shapes in (system -> developer instructions, assistant `reasoning` + `tool_calls`,
  tool results matched to their calls by `tool_call_id`);
- the per-turn analysis rule: reasoning of every turn that ended in a final answer is dropped,
  a turn still inside a tool loop keeps it (the library's `auto_drop_analysis` only drops what
  precedes the first final of the whole conversation);
- exact history: an assistant message may carry `exact_history`, the model's own tokens as the
  stream parser recorded them (history.py). They are spliced in verbatim (`<|return|>` stored as `<|end|>`), so a
  prompt cache keyed on tokens keeps matching what the model generated (the library would move
  `to=` before `<|channel|>` and re-tokenize the text);
- tool schemas flattened into what the library's TypeScript rendering understands; tools grouped in a
  namespace (the Responses API's `namespace` tool) declared as a harmony namespace of their own
  (`namespace multi_agent_v1 { ... }`, called `to=multi_agent_v1.spawn_agent`);
- calls in history written in the order the model writes them (`<|channel|>commentary to=functions.f
  <|constrain|>json<|message|>`, format.md), not the library's canonical `to=` first: a conversation
  re-rendered from OpenAI shapes then reads as the model produced it (and as the docs show).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence, Union

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    RenderOptions,
    Role,
    SystemContent,
    ToolDescription,
    ToolNamespaceConfig,
)

from .errors import HarmonyIOError
from .grammar import (
    ANALYSIS,
    ASSISTANT,
    BUILTIN_TOOLS,
    CHANNELS,
    COMMENTARY,
    FINAL,
    FUNCTIONS,
    BuiltinToolSpec,
    call_channel,
    call_content_type,
    function_recipient,
    qualified_name,
)
from .history import EXACT_HISTORY
from .schema import flatten_schema
from .tokens import CALL, END, RETURN, assistant_header
from .vocab import encoding

EFFORTS = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}
REASONING_EFFORTS = tuple(EFFORTS)  # what the system message can say
EFFORT_ALIASES = {"minimal": "low"}  # OpenAI's API value gpt-oss has no level for
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str
    parameters: Optional[dict]  # None: no parameters, rendered `() => any` as openai-harmony does
    namespace: Optional[str] = None  # None: the `functions` namespace

    @property
    def qualified_name(self) -> str:
        return qualified_name(self.name, self.namespace)


@dataclass(frozen=True)
class Namespace:
    """A group of function tools under a namespace of their own (the Responses API's `namespace` tool)."""

    name: str
    description: str


@dataclass(frozen=True)
class ExactMessage:
    """An assistant message exactly as generated: its tokens from `<|start|>` through its stop token."""

    tokens: tuple[int, ...]
    channel: Optional[str]
    recipient: Optional[str] = None


Item = Union[Message, ExactMessage]


@dataclass
class RenderedPrompt:
    tokens: list[int]
    has_function_tools: bool = False
    function_names: list[str] = field(default_factory=list)  # qualified (`multi_agent_v1.spawn_agent`)
    builtin_tools: tuple[str, ...] = ()

    @property
    def recipients(self) -> list[str]:
        """Every tool the prompt declares, as the model addresses it (`python`, `functions.get_weather`)."""
        return list(self.builtin_tools) + [function_recipient(n) for n in self.function_names]


def reasoning_effort(value: Optional[str], default: str = "medium") -> str:
    """A reasoning effort the system message can state (`minimal` is read as `low`)."""
    if value is None:
        return default
    value = EFFORT_ALIASES.get(value, value)
    if value not in EFFORTS:
        raise HarmonyIOError(f"reasoning effort must be one of {', '.join(REASONING_EFFORTS)}, got {value!r}")
    return value


def parse_tools(tools: Optional[Sequence[dict]]) -> list[FunctionTool]:
    """OpenAI function tools (chat `{"type":"function","function":{...}}` or Responses' flat form), and the
    functions of Responses `namespace` tools (their FunctionTool has `namespace`)."""
    out: list[FunctionTool] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict):
            raise HarmonyIOError(f"tools[{i}] must be an object")
        if tool.get("type") == "namespace":
            out += _namespace_functions(tool, f"tools[{i}]", seen)
        else:
            out.append(_function(tool, f"tools[{i}]", None, seen))
    return out


def namespaces(tools: Optional[Sequence[dict]]) -> list[Namespace]:
    """The namespaces `tools` declare, in order (what the developer message lists besides `functions`)."""
    return [Namespace(t["name"], t.get("description") or "") for t in tools or []
            if isinstance(t, dict) and t.get("type") == "namespace"]


def _namespace_functions(tool: dict, where: str, seen: set[str]) -> list[FunctionTool]:
    name = tool.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.match(name) or name in BUILTIN_TOOLS or name == FUNCTIONS:
        raise HarmonyIOError(f"{where}: invalid namespace name {name!r} (letters, digits, _ and -, up to 64; not "
                             f"{FUNCTIONS} or a built-in tool's)")
    if not isinstance(tool.get("description", ""), str):
        raise HarmonyIOError(f"{where}: description must be a string")
    members = tool.get("tools")
    if not isinstance(members, list) or not members:
        raise HarmonyIOError(f"{where} ({name}): a namespace needs a non-empty list of tools")
    return [_function(t, f"{where}.tools[{j}]", name, seen) for j, t in enumerate(members)]


def _function(tool: Any, where: str, namespace: Optional[str], seen: set[str]) -> FunctionTool:
    if not isinstance(tool, dict):
        raise HarmonyIOError(f"{where} must be an object")
    if tool.get("type", "function") != "function":
        raise HarmonyIOError(f"{where}: unsupported tool type {tool.get('type')!r} (only 'function')")
    spec = tool.get("function", tool)
    name = spec.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.match(name):
        raise HarmonyIOError(f"{where}: invalid function name {name!r} (letters, digits, _ and -, up to 64)")
    qualified = qualified_name(name, namespace)
    if qualified in seen:
        raise HarmonyIOError(f"{where}: duplicate function name {qualified!r}")
    seen.add(qualified)
    desc = spec.get("description") or ""
    if not isinstance(desc, str):
        raise HarmonyIOError(f"{where}: description must be a string")
    try:
        params = _parameters(spec.get("parameters"))
    except HarmonyIOError as e:
        raise HarmonyIOError(f"{where} ({name}): {e}") from None
    return FunctionTool(name, desc, params, namespace)


def _parameters(schema: Any) -> Optional[dict]:
    """The flattened schema, or None for a function without parameters.

    OpenAI documents an omitted `parameters` as an empty parameter list; openai-harmony renders
    that as `() => any`. An empty schema (`{}`, which the Responses API makes clients send when
    there are no parameters) says nothing more, so it means the same.
    """
    if schema is None or (isinstance(schema, dict) and not schema):
        return None
    return flatten_schema(schema)


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                parts.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise HarmonyIOError(f"{where}: unsupported content part {kind!r} (text only)")
        return "".join(parts)
    raise HarmonyIOError(f"{where}: content must be a string or a list of text parts")


def _effort(value: str) -> str:
    if value not in EFFORTS:  # the strict form: aliases are for API edges (reasoning_effort())
        raise HarmonyIOError(f"reasoning_effort must be one of {sorted(EFFORTS)}, got {value!r}")
    return value


def system_message(
    reasoning_effort: str = "medium",
    model_identity: Optional[str] = None,
    knowledge_cutoff: str = "2024-06",
    current_date: Optional[str] = None,
    builtin_tools: Iterable[str] = (),
) -> Message:
    sc = SystemContent.new().with_reasoning_effort(EFFORTS[_effort(reasoning_effort)]).with_knowledge_cutoff(knowledge_cutoff)
    if model_identity is not None:
        sc = sc.with_model_identity(model_identity)
    if current_date is not None:
        sc = sc.with_conversation_start_date(current_date)
    for name in builtin_tools:
        sc = sc.with_tools(_builtin(name).declaration())
    return Message.from_role_and_content(Role.SYSTEM, sc)


def _builtin(name: str) -> BuiltinToolSpec:
    """The built-in tool called `name` (a user error if there is none)."""
    if name not in BUILTIN_TOOLS:
        raise HarmonyIOError(f"unknown built-in tool {name!r} ({', '.join(BUILTIN_TOOLS)})")
    return BUILTIN_TOOLS[name]


def _assistant_items(msg: dict, where: str, builtin: set[str]) -> list[Item]:
    raw = msg.get(EXACT_HISTORY)
    if raw:
        items: list[Item] = []
        for j, r in enumerate(raw):
            tokens = r.get("tokens") if isinstance(r, dict) else getattr(r, "tokens", None)
            if not tokens:
                raise HarmonyIOError(f"{where}.{EXACT_HISTORY}[{j}]: no tokens")
            get = (lambda k: r.get(k)) if isinstance(r, dict) else (lambda k: getattr(r, k, None))
            items.append(ExactMessage(tuple(int(t) for t in tokens), get("channel"), get("recipient")))
        return items
    items = []
    reasoning = msg.get("reasoning", msg.get("reasoning_content"))
    if reasoning:
        items.append(Message.from_role_and_content(Role.ASSISTANT, _text(reasoning, where)).with_channel(ANALYSIS))
    calls = msg.get("tool_calls") or []
    content = _text(msg.get("content"), where)
    if calls:
        if content:
            items.append(Message.from_role_and_content(Role.ASSISTANT, content).with_channel(COMMENTARY))
        for k, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise HarmonyIOError(f"{where}.tool_calls[{k}]: expected {{'function': {{'name', 'arguments'}}}}")
            args = fn.get("arguments", "")
            if not isinstance(args, str):
                args = json.dumps(args)
            recipient = function_recipient(fn["name"], builtin)
            items.append(_call_message(recipient, _call_channel(call, recipient), args))
    elif content or not reasoning:
        items.append(Message.from_role_and_content(Role.ASSISTANT, content).with_channel(FINAL))
    return items


def _call_message(recipient: str, channel: str, arguments: str) -> ExactMessage:
    """A call as the model writes it: channel first, then `to=`, then the content type (format.md)."""
    content_type = call_content_type(recipient)
    text = (f"<|start|>{ASSISTANT}<|channel|>{channel} to={recipient}"
            f"{' ' + content_type if content_type else ''}<|message|>")
    enc = encoding()
    tokens = enc.encode(text, allowed_special="all") + enc.encode(arguments, allowed_special=set()) + [CALL]
    return ExactMessage(tuple(tokens), channel, recipient)


def _call_channel(call: dict, recipient: str) -> str:
    """The channel a call was (or is re-rendered) on: the one the parser recorded, else the
    canonical one (grammar.call_channel)."""
    channel = call.get("channel") if isinstance(call, dict) else None
    if channel in CHANNELS:
        return channel
    return call_channel(recipient)


def _calls_by_id(messages: Sequence[dict], builtin: set[str]) -> dict[str, tuple[str, str]]:
    """tool_call_id -> (tool name, channel of the call), from earlier assistant messages.

    A tool answers on the channel it was called on, so the result renders there too.
    """
    out: dict[str, tuple[str, str]] = {}
    for msg in messages:
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            for call in msg.get("tool_calls") or []:
                if isinstance(call, dict) and isinstance(call.get("function"), dict) and call.get("id"):
                    name = call["function"].get("name", "")
                    out[call["id"]] = (name, _call_channel(call, function_recipient(str(name), builtin)))
    return out


def _turns(items: list[tuple[str, Item]]) -> list[list[int]]:
    """Indices of non-user items grouped into turns (a user message closes a turn)."""
    turns: list[list[int]] = [[]]
    for i, (role, _) in enumerate(items):
        if role == "user":
            turns.append([])
        else:
            turns[-1].append(i)
    return turns


def _channel(item: Item) -> Optional[str]:
    return item.channel


def build_items(
    messages: Sequence[dict],
    *,
    builtin_tools: Iterable[str] = (),
    keep_analysis: bool = False,
) -> tuple[list[str], list[Item]]:
    """(developer instruction texts, conversation items) with the per-turn analysis rule applied."""
    builtin = set(builtin_tools)
    instructions: list[str] = []
    items: list[tuple[str, Item]] = []
    calls = _calls_by_id(messages, builtin)
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise HarmonyIOError(f"{where} must be an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            text = _text(msg.get("content"), where)
            if text:
                instructions.append(text)
        elif role == "user":
            items.append(("user", Message.from_role_and_content(Role.USER, _text(msg.get("content"), where))))
        elif role == "assistant":
            items += [("assistant", it) for it in _assistant_items(msg, where, builtin)]
        elif role == "tool":
            name, channel = msg.get("name"), None
            call_id = msg.get("tool_call_id")
            if call_id is not None and call_id in calls:
                name, channel = calls[call_id][0] or name, calls[call_id][1]
            if not isinstance(name, str) or not name:
                raise HarmonyIOError(f"{where}: tool message needs a 'name' or a 'tool_call_id' of an earlier call")
            author = function_recipient(name, builtin)
            if msg.get("channel") in CHANNELS:
                channel = msg["channel"]
            elif channel is None:
                channel = call_channel(author)
            m = (Message.from_author_and_content(Author.new(Role.TOOL, author), _text(msg.get("content"), where))
                 .with_channel(channel).with_recipient(ASSISTANT))
            items.append(("tool", m))
        else:
            raise HarmonyIOError(f"{where}: unknown role {role!r} (system, developer, user, assistant, tool)")
    if not keep_analysis:
        drop: set[int] = set()
        for turn in _turns(items):
            if any(_channel(items[i][1]) == FINAL for i in turn):
                drop |= {i for i in turn if items[i][0] == "assistant" and _channel(items[i][1]) == ANALYSIS
                         and getattr(items[i][1], "recipient", None) is None}
        items = [it for i, it in enumerate(items) if i not in drop]
    return instructions, [it for _, it in items]


def developer_message(instructions: Sequence[str], tools: Sequence[FunctionTool],
                      groups: Sequence[Namespace] = ()) -> Optional[Message]:
    if not instructions and not tools:
        return None
    dev = DeveloperContent.new()
    if instructions:
        dev = dev.with_instructions("\n\n".join(instructions))

    def described(ns: Optional[str]) -> list[ToolDescription]:
        return [ToolDescription.new(t.name, t.description, t.parameters) for t in tools if t.namespace == ns]

    if described(None):
        dev = dev.with_function_tools(described(None))
    for group in groups:
        dev = dev.with_tools(ToolNamespaceConfig(name=group.name, description=group.description or None,
                                                 tools=described(group.name)))
    return Message.from_role_and_content(Role.DEVELOPER, dev)


def _exact_tokens(raw: ExactMessage) -> list[int]:
    toks = list(raw.tokens)
    if toks and toks[-1] == RETURN:
        toks[-1] = END  # a finished answer is stored as <|end|> in history
    return toks


def render_items(header: Sequence[Message], items: Sequence[Item], has_function_tools: bool) -> list[int]:
    """Tokens of header + items + `<|start|>assistant`."""
    enc = encoding()
    if not any(isinstance(it, ExactMessage) for it in items):
        conv = Conversation.from_messages(list(header) + list(items))
        return enc.render_conversation_for_completion(
            conv, Role.ASSISTANT, RenderConversationConfig(auto_drop_analysis=False)
        )
    opts = RenderOptions(conversation_has_function_tools=has_function_tools)
    out: list[int] = []
    for m in list(header) + list(items):
        out += _exact_tokens(m) if isinstance(m, ExactMessage) else enc.render(m, opts)
    return out + assistant_header()


def render_prompt(
    messages: Sequence[dict],
    *,
    tools: Optional[Sequence[dict]] = None,
    reasoning_effort: str = "medium",
    model_identity: Optional[str] = None,
    knowledge_cutoff: str = "2024-06",
    current_date: Optional[str] = None,
    builtin_tools: Sequence[str] = (),
    keep_analysis: bool = False,
) -> list[int]:
    """Prompt tokens for the next assistant turn of an OpenAI chat-style conversation."""
    return render(messages, tools=tools, reasoning_effort=reasoning_effort, model_identity=model_identity,
                  knowledge_cutoff=knowledge_cutoff, current_date=current_date, builtin_tools=builtin_tools,
                  keep_analysis=keep_analysis).tokens


def render(
    messages: Sequence[dict],
    *,
    tools: Optional[Sequence[dict]] = None,
    reasoning_effort: str = "medium",
    model_identity: Optional[str] = None,
    knowledge_cutoff: str = "2024-06",
    current_date: Optional[str] = None,
    builtin_tools: Sequence[str] = (),
    keep_analysis: bool = False,
) -> RenderedPrompt:
    """Like `render_prompt`, also returning which function tools the prompt declares."""
    for name in builtin_tools:
        _builtin(name)  # an unknown name fails before any work
    functions = parse_tools(tools)
    instructions, items = build_items(messages, builtin_tools=builtin_tools, keep_analysis=keep_analysis)
    header = [system_message(reasoning_effort, model_identity, knowledge_cutoff, current_date, builtin_tools)]
    dev = developer_message(instructions, functions, namespaces(tools))
    if dev is not None:
        header.append(dev)
    # the system message names the `functions` namespace's channel when it has tools (as the library decides)
    has_functions = any(f.namespace is None for f in functions)
    tokens = render_items(header, items, has_functions)
    return RenderedPrompt(tokens, has_functions, [f.qualified_name for f in functions], tuple(builtin_tools))


def render_tool_result(name: str, content: str, *, channel: str = COMMENTARY, builtin: bool = False) -> list[int]:
    """Tokens of one tool result message, to append after the model's raw tool call."""
    author = name if builtin else function_recipient(name)
    m = (Message.from_author_and_content(Author.new(Role.TOOL, author), content)
         .with_channel(channel).with_recipient(ASSISTANT))
    return encoding().render(m)


def today() -> str:
    return _dt.date.today().isoformat()

