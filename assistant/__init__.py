"""The assistant layer: what the terminal chat, the chat page, the server and Python users share.

`Engine` runs one model with its prompt caches and speaks harmony (prompt tokens in, parser events
out); `ChatSession` is a multi-turn conversation with tools on top of it; `ConversationStore` keeps
conversations in SQLite and `Workspace` runs the chat page's stored conversations turn by turn.
"""

from .conversations import Conversation, ConversationStore, StoreError
from .data_dir import user_data_dir
from .engine import Engine, Finished
from .session import ChatSession, ContextFull, ToolResult, TurnReport
from .stop import StopSignal
from .workspace import NoSuchConversation, TurnFinished, Workspace

__all__ = ["ChatSession", "ContextFull", "Conversation", "ConversationStore", "Engine", "Finished",
           "NoSuchConversation", "StopSignal", "StoreError", "ToolResult", "TurnFinished", "TurnReport", "Workspace",
           "user_data_dir"]
