"""The harmony grammar's words, in one place: channels, content types, roles, built-in tools, naming.

Everything that reads or writes harmony (the renderer, the header reader, the parser, the OpenAI
shapes, the assistant's tool dispatch) asks here instead of spelling a channel, a namespace or a
built-in's name itself. Token ids live in tokens.py; this module holds the words between them.

Naming: the model addresses a function tool `get_weather` as `functions.get_weather` and a built-in
by its own name (`python`) or a call in its namespace (`browser.search`). OpenAI's API speaks the
bare function name; `function_recipient` and `tool_name` map between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from openai_harmony import ToolNamespaceConfig

# -- channels --------------------------------------------------------------------------------------

ANALYSIS = "analysis"  # reasoning; built-in tool calls (format.md)
COMMENTARY = "commentary"  # preambles and function tool calls
FINAL = "final"  # the answer
CHANNELS = (ANALYSIS, COMMENTARY, FINAL)

# -- content types ---------------------------------------------------------------------------------

CONSTRAIN_MARK = "<|constrain|>"  # what openai-harmony prefixes a constrained content type with
CONTENT_TYPE_WORDS = ("json", "code")  # the words a header may name a content type with
JSON_CONTENT_TYPE = CONSTRAIN_MARK + "json"  # a function call's arguments
CODE_CONTENT_TYPE = "code"  # the python tool's calls

# -- roles -----------------------------------------------------------------------------------------

ROLE_NAMES = ("assistant", "user", "system", "developer")  # authors, never tools
ASSISTANT = "assistant"

# -- built-in tools --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltinToolSpec:
    """A built-in tool as the harmony format knows it: the grammar half of a built-in.

    `name` is both how the model addresses it (`python`) and its namespace (`browser.search`);
    `declaration` is what the system message says about it (openai-harmony's namespace config, the
    one home of that text); `call_content_type` is the content type a call addressed to `name`
    itself carries. The runner (what executes a call) is the assistant's: an object in
    `assistant/tools/` that holds one of these as its `spec`.
    """

    name: str
    declaration: Callable[[], ToolNamespaceConfig]
    call_content_type: Optional[str] = None


PYTHON = BuiltinToolSpec("python", ToolNamespaceConfig.python, call_content_type=CODE_CONTENT_TYPE)
BROWSER = BuiltinToolSpec("browser", ToolNamespaceConfig.browser)  # its calls (browser.search, ...) are JSON
BUILTIN_TOOLS = {t.name: t for t in (PYTHON, BROWSER)}


# -- naming: recipients <-> OpenAI function names --------------------------------------------------

FUNCTIONS = "functions"  # the namespace of function tools
_FUNCTION_PREFIX = FUNCTIONS + "."


def is_function_recipient(recipient: str) -> bool:
    """Whether the model addressed a function tool: one in `functions` (`functions.get_weather`) or in a
    namespace the request declared (`multi_agent_v1.spawn_agent`), as opposed to a built-in tool
    (`python`, `browser.search`)."""
    namespace, dot, _ = recipient.partition(".")
    return bool(dot) and namespace not in BUILTIN_TOOLS


def is_builtin(name: str, builtin: Iterable[str] = ()) -> bool:
    """Whether `name` addresses a built-in tool: `python`, or any call in a built-in's namespace
    (`browser.search`, `browser.open` when `browser` is declared)."""
    declared = set(builtin)
    return name in declared or name.split(".", 1)[0] in declared


def function_recipient(name: str, builtin: Iterable[str] = ()) -> str:
    """How the model addresses a tool: built-ins by their own name (`python`, `browser.search`), a function
    of a declared namespace by its qualified name (`multi_agent_v1.spawn_agent`: function names never hold a
    dot), other function tools in the `functions.` namespace."""
    if is_builtin(name, builtin) or "." in name:
        return name
    return _FUNCTION_PREFIX + name


def tool_name(recipient: str) -> str:
    """The OpenAI name of what the model addressed: `functions.get_weather` -> `get_weather`; a namespaced
    function keeps its qualified name (`multi_agent_v1.spawn_agent`: see `split_name`), built-ins theirs."""
    return recipient[len(_FUNCTION_PREFIX):] if recipient.startswith(_FUNCTION_PREFIX) else recipient


def split_name(name: str) -> tuple[Optional[str], str]:
    """(namespace, function) of a qualified name: `multi_agent_v1.spawn_agent` -> ("multi_agent_v1",
    "spawn_agent"); a plain function name has no namespace. The Responses API carries them apart."""
    namespace, dot, fn = name.partition(".")
    return (namespace, fn) if dot else (None, name)


def qualified_name(name: str, namespace: Optional[str]) -> str:
    return f"{namespace}.{name}" if namespace else name


def call_channel(recipient: str) -> str:
    """The canonical channel of a call to `recipient` (and of its result): function calls on
    `commentary`, built-in tool calls on `analysis` (format.md)."""
    return COMMENTARY if is_function_recipient(recipient) else ANALYSIS


def call_content_type(recipient: str) -> Optional[str]:
    """The content type a call to `recipient` is rendered with: JSON for functions, the built-in's own
    for a built-in addressed by its name (`python`: code), none for calls inside a built-in's namespace."""
    if is_function_recipient(recipient):
        return JSON_CONTENT_TYPE
    tool = BUILTIN_TOOLS.get(recipient)
    return tool.call_content_type if tool is not None else None
