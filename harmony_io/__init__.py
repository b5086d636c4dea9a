"""The harmony format through openai-harmony: offline encoding, rendering, streaming parsing, OpenAI shapes.

Imports nothing from MLX: it speaks token ids and text only.
"""

from .errors import HarmonyIOError
from .parser import (
    Done,
    Event,
    MessageBegin,
    MessageEnd,
    PreambleDelta,
    ReasoningDelta,
    StreamParser,
    TextDelta,
    ToolCallBegin,
    ToolCallDelta,
    ToolCallEnd,
)
from .history import EXACT_HISTORY, ExactHistoryMemory, history_message, responses_input_messages
from .render import (
    REASONING_EFFORTS,
    ExactMessage,
    RenderedPrompt,
    forced_function_call,
    function_recipient,
    parse_tools,
    reasoning_effort,
    render,
    render_prompt,
    render_tool_result,
    today,
)
from .shapes import AssistantTurn, ChatStreamMapper, ResponsesStreamMapper, chat_message, responses_items
from .tokens import STOP_IDS, assistant_header
from .vocab import encoding, vocab_status

__all__ = [
    "AssistantTurn", "ChatStreamMapper", "Done", "EXACT_HISTORY", "Event", "ExactHistoryMemory", "ExactMessage",
    "HarmonyIOError", "MessageBegin", "MessageEnd", "PreambleDelta", "REASONING_EFFORTS", "ReasoningDelta",
    "RenderedPrompt", "forced_function_call", "function_recipient", "history_message", "reasoning_effort",
    "responses_input_messages", "ResponsesStreamMapper", "STOP_IDS", "StreamParser",
    "TextDelta", "ToolCallBegin", "ToolCallDelta", "ToolCallEnd", "assistant_header", "chat_message",
    "encoding", "parse_tools", "render", "render_prompt", "render_tool_result", "responses_items", "today",
    "vocab_status",
]
