"""Serving gpt-oss: the engine (model + prompt cache + harmony), chat sessions, and the HTTP API."""

from .engine import Engine, TurnStats

__all__ = ["Engine", "TurnStats"]
