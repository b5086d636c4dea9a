"""The assistant layer: what the terminal chat, the server and Python users share.

`Engine` runs one model with a prompt cache and speaks harmony (prompt tokens in, parser events
out); `ChatSession` is a multi-turn conversation with tools on top of it.
"""

from .engine import Engine, TurnStats
from .session import ChatSession, ToolResult, TurnReport

__all__ = ["ChatSession", "Engine", "ToolResult", "TurnReport", "TurnStats"]
