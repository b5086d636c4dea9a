"""The assistant layer: what the terminal chat, the chat page, the server and Python users share.

`Engine` runs one model with its prompt caches and speaks harmony (prompt tokens in, parser events
out); `ChatSession` is a multi-turn conversation with tools on top of it; `ConversationStore` keeps
conversations in SQLite and `Workspace` runs the chat page's stored conversations turn by turn.
"""

from .conversations import Conversation, ConversationStore, StoreError
from .data_dir import user_data_dir
from .engine import Engine, Finished
from .errors import AssistantError, ContextFull, NoSuchConversation
from .session import ChatSession, ToolResult, TurnReport
from .stop import StopSignal
from .tools.builtin import BuiltinTool, ToolOutput
from .workspace import TurnFinished, Workspace

__all__ = ["AssistantError", "BuiltinTool", "ChatSession", "ContextFull", "Conversation", "ConversationStore",
           "Engine", "Finished", "NoSuchConversation", "StopSignal", "StoreError", "ToolOutput", "ToolResult",
           "TurnFinished", "TurnReport", "Workspace", "user_data_dir"]
