"""Built-in tools as one object each: the harmony spec (name, system-message declaration) and the runner.

The grammar half of a built-in is `harmony_io`'s `BuiltinToolSpec` (`harmony_io.PYTHON`,
`harmony_io.BROWSER`): its name as the model addresses it, what the system message declares, the
content type of its calls. That is the declaration's one home. The runner half lives here, because
it runs processes (harmony_io stays free of them): a `BuiltinTool` subclass names its spec and
executes calls. A session declares exactly the built-ins it holds runners for, so adding one (the
browser) is a subclass here with `spec = BROWSER`, handed to the session.

This folder's runners work with the standard library alone (the sandbox tests run them with the
system's python3 from a copy of this folder), so harmony_io is imported only for type checking here,
and a runner that must run there fetches its spec when asked (python_tool.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gptoss_metal.harmony_io import BuiltinToolSpec


@dataclass
class ToolOutput:
    text: str
    status: str  # "ok" | "error" | "timeout" | "crashed"


class BuiltinTool(ABC):
    """A built-in tool the model can call: `spec` says what harmony knows of it, `run` answers a call."""

    @property
    @abstractmethod
    def spec(self) -> BuiltinToolSpec:
        """What harmony knows of the tool (harmony_io.PYTHON, harmony_io.BROWSER): name and declaration."""

    @property
    def name(self) -> str:
        """How the model addresses the tool (and the namespace of its calls)."""
        return self.spec.name

    @abstractmethod
    def run(self, arguments: str) -> ToolOutput:
        """Answer one call (its arguments as the model wrote them); never raises for what the call does."""

    def reset(self) -> None:
        """Forget the tool's state: the conversation starts over."""

    def close(self) -> None:
        """Release what the tool holds (processes, files); it is not used again."""

    def describe(self) -> list[str]:
        """What the user should know about how the tool runs, in lines (e.g. what contains it)."""
        return []
