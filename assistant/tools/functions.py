"""Function tools for Python API users: register a callable with a JSON schema, call it by name."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

from gptoss_metal.harmony_io import parse_tools

from ..errors import AssistantError


@dataclass
class FunctionTool:
    name: str
    description: str
    parameters: Optional[dict]  # None: the function takes no arguments (rendered `() => any`)
    fn: Callable[..., Any]

    def openai_spec(self) -> dict:
        spec: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.parameters is not None:
            spec["parameters"] = self.parameters
        return {"type": "function", "function": spec}


class FunctionRegistry:
    def __init__(self) -> None:
        self.tools: dict[str, FunctionTool] = {}

    def register(self, fn: Callable[..., Any], *, name: Optional[str] = None, description: Optional[str] = None,
                 parameters: Optional[dict] = None) -> FunctionTool:
        """Add `fn`; its schema is checked now (a bad schema is a HarmonyIOError here, not mid-chat;
        a second function of the same name an AssistantError)."""
        tool = FunctionTool(
            name=name or fn.__name__,
            description=description if description is not None else (inspect.getdoc(fn) or ""),
            parameters=parameters,
            fn=fn,
        )
        parse_tools([tool.openai_spec()])  # validates name and schema
        if tool.name in self.tools:
            raise AssistantError(f"function {tool.name!r} is already registered")
        self.tools[tool.name] = tool
        return tool

    def specs(self) -> list[dict]:
        return [t.openai_spec() for t in self.tools.values()]

    def call(self, name: str, arguments: str) -> str:
        """Result text for the model; errors become text too (the model can recover from them)."""
        tool = self.tools.get(name)
        if tool is None:
            return f"error: unknown function {name!r}; available: {', '.join(self.tools) or 'none'}"
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            return f"error: arguments are not valid JSON ({e.msg} at {e.pos})"
        if not isinstance(args, dict):
            return "error: arguments must be a JSON object"
        try:
            result = tool.fn(**args)
        except TypeError as e:
            return f"error: bad arguments for {name}: {e}"
        except Exception as e:  # noqa: BLE001 - a tool's failure is information for the model
            return f"error: {name} raised {type(e).__name__}: {e}"
        return result if isinstance(result, str) else json.dumps(result, default=str)
