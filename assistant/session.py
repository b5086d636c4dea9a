"""ChatSession: multi-turn chat with tools and prompt reuse, without any terminal.

A turn is: the user's message, then generations until a final answer -- each tool call the model
makes is executed (built-in python, or a registered Python function), its result appended, and
generation continues, up to a step limit. History keeps the model's own tokens for every complete
message (its exact history), so the next prompt starts with exactly what the cache holds and only
the new part is prefilled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from gptoss_metal.harmony_io import (
    EXACT_HISTORY,
    AssistantTurn,
    Event,
    ToolCall,
    function_recipient,
    history_message,
    reasoning_effort,
    render,
)
from gptoss_metal.metal_runtime import GenerationStats
from gptoss_metal.metal_runtime.serving import EngineBusy

from .engine import Engine
from .errors import AssistantError, ContextFull
from .stop import StopSignal
from .tools.builtin import BuiltinTool
from .tools.functions import FunctionRegistry
from .tools.python_tool import PythonTool

SAVE_VERSION = 2  # 1: exact history was stored under "harmony_messages"


def saved_conversation(system: Optional[str], effort: str, messages: list[dict]) -> dict[str, Any]:
    """The save format's content (what `ChatSession.load` reads; exports add their own fields)."""
    return {"version": SAVE_VERSION, "system": system, "effort": effort, "messages": messages}


@dataclass
class ToolResult:
    """A tool ran for a call of the model; `output` is what the model will read."""

    name: str
    call_id: str
    output: str
    status: str  # "ok" | "error" | "timeout" | "crashed" | "unknown" | "cancelled"


@dataclass
class StepLimitReached:
    steps: int


@dataclass
class TurnReport:
    steps: list[GenerationStats] = field(default_factory=list)
    interrupted: bool = False
    finish_reason: Optional[str] = None

    @property
    def prefilled(self) -> int:
        return sum(s.prefilled_tokens for s in self.steps)

    @property
    def reused(self) -> int:
        return self.steps[0].reused_tokens if self.steps else 0

    @property
    def generated(self) -> int:
        return sum(s.generated_tokens for s in self.steps)

    def figures(self) -> dict[str, Any]:
        """The turn's numbers in one flat dict (what the chat page shows under an answer)."""
        pre_s = sum(s.prefill_seconds for s in self.steps)
        dec_s = sum(s.decode_seconds for s in self.steps)
        dec_n = sum(max(s.generated_tokens - 1, 0) for s in self.steps)
        return {
            "prompt_tokens": self.steps[0].prompt_tokens if self.steps else 0,
            "reused_tokens": self.reused,
            "prefilled_tokens": self.prefilled,
            "generated_tokens": self.generated,
            "prefill_tps": round(self.prefilled / pre_s, 1) if pre_s > 0 else 0.0,
            "decode_tps": round(dec_n / dec_s, 1) if dec_s > 0 else 0.0,
            "steps": len(self.steps),
            "finish_reason": self.finish_reason,
        }

    def line(self) -> str:
        f = self.figures()
        return (f"prefill {f['prefilled_tokens']} tok @ {f['prefill_tps']:.1f} tok/s | decode {f['generated_tokens']} "
                f"tok @ {f['decode_tps']:.1f} tok/s | reused {f['reused_tokens']} tok from cache"
                + (f" | {f['steps']} steps" if f["steps"] > 1 else ""))


ChatEvent = Union[Event, ToolResult, StepLimitReached]


class ChatSession:
    def __init__(
        self,
        engine: Engine,
        *,
        system: Optional[str] = None,
        effort: str = "medium",
        python_tool: Union[bool, BuiltinTool] = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 4096,
        max_tool_steps: int = 8,
        seed: Optional[int] = None,
        keep_analysis: bool = False,
        current_date: Optional[str] = None,
        cache_key: Optional[str] = None,
    ):
        self.engine = engine
        self.system = system
        self.effort = effort
        # True: a fresh interpreter; an object: that runner (one the caller keeps alive across sessions)
        self.python: Optional[BuiltinTool] = (PythonTool() if python_tool else None) if isinstance(python_tool, bool) \
            else python_tool
        self.temperature, self.top_p, self.max_tokens, self.seed = temperature, top_p, max_tokens, seed
        self.max_tool_steps = max_tool_steps
        self.keep_analysis = keep_analysis
        self.current_date = current_date
        self.cache_key = cache_key  # which of the engine's prompt caches this conversation uses
        self.functions = FunctionRegistry()
        self.messages: list[dict[str, Any]] = []
        self.last_turn: Optional[TurnReport] = None
        self.history_reports: list[TurnReport] = []

    # -- configuration ----------------------------------------------------------------------

    def register_function(self, fn: Callable[..., Any], *, name: Optional[str] = None,
                          description: Optional[str] = None, parameters: Optional[dict] = None) -> None:
        self.functions.register(fn, name=name, description=description, parameters=parameters)

    def set_effort(self, effort: str) -> None:
        self.effort = reasoning_effort(effort)

    def reset(self) -> None:
        """Forget the conversation; the built-in tools' state (the interpreter, its processes) starts over too."""
        self.messages = []
        self.last_turn = None
        for tool in self.builtin_tools.values():
            tool.reset()

    @property
    def builtin_tools(self) -> dict[str, BuiltinTool]:
        """The built-ins this session runs, by name: exactly what its prompts declare."""
        return {t.name: t for t in (self.python,) if t is not None}

    def tool_names(self) -> list[str]:
        return list(self.builtin_tools) + list(self.functions.tools)

    def render(self):
        """The next prompt (tokens, and the tools it declares as the model addresses them)."""
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        return render(msgs, tools=self.functions.specs(), reasoning_effort=self.effort,
                      current_date=self.current_date, builtin_tools=tuple(self.builtin_tools),
                      keep_analysis=self.keep_analysis)

    def prompt_tokens(self) -> list[int]:
        return self.render().tokens

    # -- a turn ------------------------------------------------------------------------------

    def send(self, text: str, stop: Optional[StopSignal] = None) -> Iterator[ChatEvent]:
        """Stream one user turn (all its generation steps and tool results).

        `stop` ends the running generation at its next token and the turn before its next tool call or
        generation, like a Ctrl-C (the partial answer is kept, marked interrupted). Raises ContextFull
        before generating when the conversation no longer fits.
        """
        stop = stop if stop is not None else StopSignal()
        stopped = stop.is_set
        self.messages.append({"role": "user", "content": text})
        report = TurnReport()
        self.last_turn = report
        self.history_reports.append(report)
        for step in range(self.max_tool_steps + 1):
            turn = AssistantTurn()
            stats = GenerationStats()
            completed, recorded = False, True  # however the step ends (even Ctrl-C while rendering), it is kept
            try:
                prompt = self.render()
                room = self.engine.room(prompt.tokens)
                if room < 1:
                    recorded = False
                    if step == 0:
                        self.messages.pop()  # nothing was said: the turn did not happen
                        self.history_reports.pop()
                    raise ContextFull(f"the conversation is {len(prompt.tokens)} tokens long and the model's "
                                      f"context holds {self.engine.context_length}: start a new one")
                report.steps.append(stats)
                try:
                    events = self.engine.stream(
                        prompt.tokens, max_tokens=min(self.max_tokens, room), temperature=self.temperature,
                        top_p=self.top_p, seed=self.seed, tools=prompt.recipients, stats=stats, stop=stop,
                        cache_key=self.cache_key)
                except EngineBusy:
                    recorded = False
                    if step == 0:  # refused before anything ran (the engine's queue is full): no turn happened
                        self.messages.pop()
                        self.history_reports.pop()
                    raise
                for ev in events:
                    turn.add(ev)
                    yield ev
                completed = turn.finish_reason is not None or not stopped()
            finally:
                if recorded:
                    self.messages.append(history_message(turn, interrupted=not completed))
                    if not completed:
                        report.interrupted = True
                        report.finish_reason = "interrupted"
            if not completed:
                return
            report.finish_reason = turn.finish_reason
            if turn.finish_reason != "tool_calls":
                return
            if step == self.max_tool_steps:
                yield StepLimitReached(step)
                return
            for call in turn.tool_calls:
                if stopped():
                    result = ToolResult(call.name, call.id, "error: the user stopped the turn before this call ran",
                                        "cancelled")
                else:
                    result = self._run_tool(call)
                self.messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name,
                                      "content": result.output, "status": result.status})
                yield result
            if stopped():
                report.interrupted = True
                report.finish_reason = "interrupted"
                return

    def undo_last_turn(self) -> Optional[str]:
        """Forget the last user message and everything after it; returns its text (None: no user message).

        Regenerate and edit-and-resend are this followed by `send`: the re-rendered prompt is a
        prefix of what the cache holds, so only the (new) user message is prefilled again.
        """
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].get("role") == "user":
                text = self.messages[i].get("content")
                del self.messages[i:]
                return text if isinstance(text, str) else ""
        return None

    def ask(self, text: str) -> str:
        """Run a turn to completion and return the answer text."""
        for _ in self.send(text):
            pass
        last = self.messages[-1]
        return last.get("content") or ""

    def _run_tool(self, call: ToolCall) -> ToolResult:
        builtin = self.builtin_tools.get(call.recipient)
        if builtin is not None:
            out = builtin.run(call.arguments)
            return ToolResult(builtin.name, call.id, out.text, out.status)
        if call.name in self.functions.tools and call.recipient == function_recipient(call.name):
            text = self.functions.call(call.name, call.arguments)
            return ToolResult(call.name, call.id, text, "error" if text.startswith("error:") else "ok")
        return ToolResult(call.name, call.id,
                          f"error: there is no tool {call.recipient!r}; available: {', '.join(self.tool_names()) or 'none'}",
                          "unknown")

    # -- persistence -------------------------------------------------------------------------

    def save(self, path: Union[str, Path]) -> None:
        data = saved_conversation(self.system, self.effort, self.messages)
        Path(path).expanduser().write_text(json.dumps(data, ensure_ascii=False, indent=1))

    def load(self, path: Union[str, Path]) -> None:
        p = Path(path).expanduser()
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise AssistantError(f"{p}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AssistantError(f"{p}: not a saved conversation ({e})") from None
        if not isinstance(data, dict) or data.get("version") not in (1, SAVE_VERSION) \
                or not isinstance(data.get("messages"), list):
            raise AssistantError(f"{p}: not a saved gptoss conversation (version {SAVE_VERSION})")
        messages = data["messages"]
        if data["version"] == 1:
            messages = [_from_v1(m) for m in messages]
        render(messages)  # validate before replacing the current conversation
        self.messages = messages
        self.system = data.get("system")
        self.set_effort(data.get("effort", self.effort))

    def close(self) -> None:
        for tool in self.builtin_tools.values():
            tool.close()


def _from_v1(msg: Any) -> Any:
    if isinstance(msg, dict) and "harmony_messages" in msg:
        msg = dict(msg)
        msg[EXACT_HISTORY] = msg.pop("harmony_messages")
    return msg
