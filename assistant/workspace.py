"""The chat page's conversations on one engine: stored, resumed, and run a turn at a time.

The database is the truth: every turn starts from the stored messages (exact history included)
and ends by storing them again, whatever happened (answer, stop, error). What lives only in memory
is what cannot be stored: each conversation's python interpreter, kept for the most recently used
conversations. Each conversation names its own prompt cache (`cache_key`), so with several cache
slots in the engine, coming back to a conversation reuses its cached prompt.

A turn runs on its caller's thread (the server gives each running turn one); its generations queue in
the engine beside API requests, and its tool calls run there without holding any of the engine's
sequences. A conversation runs one turn at a time (the page service sees to that); reading and
renaming happen from other threads, through the store.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Union

from .conversations import DEFAULT_TITLE, Conversation, ConversationStore
from .engine import Engine
from .errors import AssistantError, NoSuchConversation
from .session import ChatEvent, ChatSession
from .stop import StopSignal
from .tools.builtin import BuiltinTool
from .tools.python_tool import PythonTool

TITLE_CHARS = 60


@dataclass
class TurnFinished:
    """The last item of a turn: its figures, and whether the user stopped it."""

    figures: dict[str, Any]
    interrupted: bool


TurnItem = Union[ChatEvent, TurnFinished]


def title_from(text: str) -> str:
    line = " ".join(text.split())
    return (line[: TITLE_CHARS - 1] + "…") if len(line) > TITLE_CHARS else (line or DEFAULT_TITLE)


class Workspace:
    def __init__(self, engine: Engine, store: ConversationStore, *, live_interpreters: int = 4,
                 max_tokens: int = 4096, temperature: float = 1.0, top_p: float = 1.0, max_tool_steps: int = 8,
                 python_factory: Callable[[], BuiltinTool] = PythonTool):
        self.engine = engine
        self.store = store
        self.live_interpreters = live_interpreters
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p
        self.max_tool_steps = max_tool_steps
        self.python_factory = python_factory
        self._interpreters: OrderedDict[str, BuiltinTool] = OrderedDict()
        self._lock = threading.Lock()

    # -- python interpreters (one per conversation, the recently used ones) -----------------

    def _interpreter(self, conv_id: str) -> BuiltinTool:
        with self._lock:
            tool = self._interpreters.pop(conv_id, None) or self.python_factory()
            self._interpreters[conv_id] = tool
            evicted = []
            while len(self._interpreters) > self.live_interpreters:
                evicted.append(self._interpreters.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return tool

    def forget(self, conv_id: str) -> None:
        """Drop what memory holds for a conversation (its interpreter); the store is the caller's."""
        with self._lock:
            tool = self._interpreters.pop(conv_id, None)
        if tool is not None:
            tool.close()

    def close(self) -> None:
        with self._lock:
            tools, self._interpreters = list(self._interpreters.values()), OrderedDict()
        for t in tools:
            t.close()

    # -- a turn -----------------------------------------------------------------------------

    def session_for(self, conv: Conversation) -> ChatSession:
        """A ChatSession that continues `conv` exactly (its settings, date, history and cache slot)."""
        s = ChatSession(self.engine, system=conv.system, effort=conv.effort,
                        python_tool=self._interpreter(conv.id) if conv.python else False,
                        temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                        max_tool_steps=self.max_tool_steps, current_date=conv.current_date, cache_key=conv.id)
        s.messages = list(conv.messages)
        return s

    def run_turn(self, conv_id: str, text: Optional[str], *, mode: str = "send",
                 stop: Optional[StopSignal] = None) -> Iterator[TurnItem]:
        """One user turn of a stored conversation, stored again when it ends (however it ends).

        mode: "send" (a new message), "regenerate" (answer the last user message again), "edit"
        (replace the last user message by `text` and answer it).
        """
        conv = self.store.get(conv_id)
        if conv is None:
            raise NoSuchConversation(f"no conversation {conv_id!r} (it may have been deleted)")
        session = self.session_for(conv)
        if mode in ("regenerate", "edit"):
            previous = session.undo_last_turn()
            if previous is None:
                raise AssistantError("there is no message to answer again")
            text = previous if mode == "regenerate" else text
        elif mode != "send":
            raise AssistantError(f"unknown turn mode {mode!r} (send, regenerate, edit)")
        if not text or not text.strip():
            raise AssistantError("the message is empty")
        figures = {i: f for i, f in conv.figures.items() if i < len(session.messages)}
        first_user = not any(m.get("role") == "user" for m in session.messages)
        if first_user and conv.title == DEFAULT_TITLE:
            self.store.update(conv_id, title=title_from(text))
        start = len(session.messages)
        try:
            yield from session.send(text, stop=stop)
        finally:
            report = session.last_turn
            shown = report.figures() if report is not None else {}
            if report is not None and len(session.messages) > start and report.steps:
                figures[len(session.messages) - 1] = shown
            self.store.save_messages(conv_id, session.messages, figures, first=start)
        yield TurnFinished(shown, bool(report and report.interrupted))
