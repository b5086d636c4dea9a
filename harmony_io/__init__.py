"""The harmony format through openai-harmony: offline encoding, rendering, streaming parsing, OpenAI shapes.

Imports nothing from MLX: it speaks token ids and text only. Other layers import from this package,
not from its modules. Where each fact lives:
- grammar.py: the words (channels, content types, roles, built-in tools, recipient <-> function name);
- tokens.py: control token ids; vocab.py: the offline vocabulary;
- events.py: what the parser emits; headers.py: reading one message header; parser.py: the state machine;
- render.py (+ schema.py): chat messages -> prompt tokens; history.py: exact history;
- shapes.py: parser events -> OpenAI Chat/Responses shapes.
"""

from .errors import HarmonyIOError
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
from .grammar import (
    BROWSER,
    BUILTIN_TOOLS,
    CHANNELS,
    PYTHON,
    BuiltinToolSpec,
    function_recipient,
    is_function_recipient,
    tool_name,
)
from .history import EXACT_HISTORY, ExactHistoryMemory, history_message, responses_input_messages
from .parser import StreamParser
from .render import (
    REASONING_EFFORTS,
    ExactMessage,
    RenderedPrompt,
    parse_tools,
    reasoning_effort,
    render,
    render_prompt,
    render_tool_result,
    today,
)
from .shapes import AssistantTurn, ChatStreamMapper, ResponsesStreamMapper, ToolCall, chat_message, responses_items
from .tokens import STOP_IDS, assistant_header
from .vocab import encoding, vocab_status

__all__ = [
    "AssistantTurn", "BROWSER", "BUILTIN_TOOLS", "BuiltinToolSpec", "CHANNELS", "ChatStreamMapper", "Done",
    "EXACT_HISTORY", "Event", "ExactHistoryMemory", "ExactMessage", "HarmonyIOError", "MessageBegin", "MessageEnd",
    "PYTHON", "PreambleDelta", "REASONING_EFFORTS", "ReasoningDelta", "RenderedPrompt", "ResponsesStreamMapper",
    "STOP_IDS", "StreamParser", "TextDelta", "ToolCall", "ToolCallBegin", "ToolCallDelta", "ToolCallEnd",
    "assistant_header", "chat_message", "encoding", "function_recipient",
    "history_message", "is_function_recipient", "parse_tools", "reasoning_effort", "render", "render_prompt",
    "render_tool_result", "responses_input_messages", "responses_items", "today", "tool_name", "vocab_status",
]
