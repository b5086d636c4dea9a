"""The tools the model can call: built-ins (one object each: harmony spec + runner) and registered functions."""

from .builtin import BuiltinTool, ToolOutput

__all__ = ["BuiltinTool", "ToolOutput"]
