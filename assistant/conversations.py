"""Conversations that outlive the process: a SQLite database in the user's data folder.

One row per conversation (title, the settings its prompt depends on) and one row per message, the
message stored exactly as `ChatSession.messages` holds it, exact history (the model's own tokens)
included. Storing the tokens is what lets a resumed conversation re-render the very prompt the
engine's prompt cache holds, so switching back to it prefills only what is new.

The conversation's date is fixed when it is created: it is part of the system message, and a
prompt that changed with the calendar would miss the cache (and tell the model a different story).
Its column is `prompt_date`: schema 1 called it `current_date`, which SQLite reads as its keyword
CURRENT_DATE (today, UTC) wherever it is not quoted, so every conversation read back with today's date.
Opening a schema-1 file renames the column (the stored dates were always right; only reads were wrong).

Every call opens its own connection (the server calls from its event loop and from the model's
worker thread); WAL mode lets a reader run beside the writer.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from gptoss_metal.harmony_io import EXACT_HISTORY, reasoning_effort, today

from .errors import AssistantError

DEFAULT_TITLE = "New chat"
SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    system TEXT,
    effort TEXT NOT NULL,
    python INTEGER NOT NULL,
    prompt_date TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    body TEXT NOT NULL,
    figures TEXT,
    PRIMARY KEY (conversation_id, position)
);
"""


class StoreError(AssistantError):
    """The conversation database cannot be used (a user-facing message)."""


@dataclass
class Conversation:
    id: str
    title: str
    created: float
    updated: float
    system: Optional[str]
    effort: str
    python: bool
    current_date: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[int, dict[str, Any]] = field(default_factory=dict)  # message position -> turn figures

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "created": self.created, "updated": self.updated}

    def settings(self) -> dict[str, Any]:
        return {"system": self.system, "effort": self.effort, "python": self.python}

    def view(self) -> dict[str, Any]:
        """The conversation as the page and exports show it: no token ids, figures beside their message."""
        msgs = []
        for i, m in enumerate(self.messages):
            shown = {k: v for k, v in m.items() if k != EXACT_HISTORY}
            if i in self.figures:
                shown["figures"] = self.figures[i]
            msgs.append(shown)
        return dict(self.summary(), **self.settings(), current_date=self.current_date, messages=msgs)


def new_conversation_id() -> str:
    return "c_" + secrets.token_hex(8)


class ConversationStore:
    def __init__(self, path: Path | str):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=10.0)) as db:
                db.execute("PRAGMA journal_mode = WAL")  # stored in the file: once, not per connection
            with self._connect() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(f"{self.path} was written by a newer gptoss-metal (schema {version}); "
                                     f"upgrade, or point --data-dir elsewhere")
                if version == 1:
                    db.execute('ALTER TABLE conversations RENAME COLUMN "current_date" TO prompt_date')
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} is not a usable conversation database ({e}); move it away or "
                             f"point --data-dir elsewhere") from None
        except OSError as e:
            raise StoreError(f"cannot create the conversation database at {self.path}: {e.strerror or e}") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=10.0)) as db:
            db.execute("PRAGMA foreign_keys = ON")  # a per-connection setting
            with db:  # one transaction: committed on success, rolled back on error
                yield db

    # -- conversations --------------------------------------------------------------------

    def create(self, *, title: str = DEFAULT_TITLE, system: Optional[str] = None, effort: str = "medium",
               python: bool = False, current_date: Optional[str] = None) -> Conversation:
        now = time.time()
        conv = Conversation(new_conversation_id(), title, now, now, system or None, reasoning_effort(effort),
                            bool(python), current_date or today())
        with self._connect() as db:
            db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (conv.id, conv.title, conv.created, conv.updated, conv.system, conv.effort,
                        int(conv.python), conv.current_date))
        return conv

    def list(self) -> list[dict[str, Any]]:
        """Summaries, the most recently used first."""
        with self._connect() as db:
            rows = db.execute("SELECT id, title, created, updated FROM conversations "
                              "ORDER BY updated DESC, created DESC").fetchall()
        return [{"id": r[0], "title": r[1], "created": r[2], "updated": r[3]} for r in rows]

    def get(self, conv_id: str) -> Optional[Conversation]:
        with self._connect() as db:
            row = db.execute("SELECT id, title, created, updated, system, effort, python, prompt_date "
                             "FROM conversations WHERE id = ?", (conv_id,)).fetchone()
            if row is None:
                return None
            rows = db.execute("SELECT position, body, figures FROM messages WHERE conversation_id = ? "
                              "ORDER BY position", (conv_id,)).fetchall()
        conv = Conversation(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7])
        conv.messages = [json.loads(body) for _, body, _ in rows]
        conv.figures = {pos: json.loads(fig) for pos, _, fig in rows if fig}
        return conv

    def update(self, conv_id: str, *, title: Optional[str] = None, system: Any = ..., effort: Optional[str] = None,
               python: Optional[bool] = None) -> bool:
        """Change what is given (`system=None` clears the instructions); False if there is no such conversation."""
        sets: list[str] = []
        args: list[Any] = []
        if title is not None:
            sets.append("title = ?")
            args.append(title.strip() or DEFAULT_TITLE)
        if system is not ...:
            sets.append("system = ?")
            args.append(system or None)
        if effort is not None:
            sets.append("effort = ?")
            args.append(reasoning_effort(effort))
        if python is not None:
            sets.append("python = ?")
            args.append(int(bool(python)))
        with self._connect() as db:
            if not sets:
                return db.execute("SELECT 1 FROM conversations WHERE id = ?", (conv_id,)).fetchone() is not None
            cur = db.execute(f"UPDATE conversations SET {', '.join(sets)} WHERE id = ?", (*args, conv_id))
            return cur.rowcount == 1

    def delete(self, conv_id: str) -> bool:
        with self._connect() as db:
            return db.execute("DELETE FROM conversations WHERE id = ?", (conv_id,)).rowcount == 1

    # -- messages ---------------------------------------------------------------------------

    def save_messages(self, conv_id: str, messages: list[dict[str, Any]],
                      figures: dict[int, dict[str, Any]], first: int = 0) -> bool:
        """Replace the conversation's messages from position `first` on (the ones before it are stored
        already and unchanged), in one transaction; False if it was deleted meanwhile."""
        with self._connect() as db:
            cur = db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conv_id))
            if cur.rowcount != 1:
                return False
            db.execute("DELETE FROM messages WHERE conversation_id = ? AND position >= ?", (conv_id, first))
            db.executemany(
                "INSERT INTO messages VALUES (?, ?, ?, ?)",
                [(conv_id, i, json.dumps(messages[i], ensure_ascii=False),
                  json.dumps(figures[i]) if i in figures else None) for i in range(first, len(messages))])
        return True
