"""Putting one local server together: the OpenAI API, the chat page over stored conversations, the guard.

`gptoss serve` / `gptoss app` and the tests build the very same thing through `assemble`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from fastapi import FastAPI

from gptoss_metal.assistant import ConversationStore, Engine, Workspace, user_data_dir

from .app import create_app
from .limits import DEFAULT_MAX_BODY_BYTES
from .openai_api import OpenAIService
from .page_api import PageService
from .page_routes import add_page
from .security import HostCheckConfig

DB_NAME = "conversations.sqlite3"


@dataclass
class LocalServer:
    app: FastAPI
    service: OpenAIService
    page: PageService
    workspace: Workspace
    database: Path

    def shutdown(self) -> None:
        """Stop accepting generations and end what runs (returns at once: safe in a signal handler)."""
        self.service.shutdown()
        self.page.shutdown()

    def close(self, timeout: float = 30.0) -> None:
        self.shutdown()
        self.workspace.close()
        self.service.engine.core.close(timeout)


def assemble(engine: Engine, *, data_dir: Optional[Path] = None, api_key: Optional[str] = None,
             bind: str = "127.0.0.1", allow_hosts: Iterable[str] = (), allow_origins: Iterable[str] = (),
             aliases: tuple[str, ...] = (), max_queue: Optional[int] = 64, max_tokens: int = 4096,
             page_temperature: float = 1.0, current_date: Optional[str] = None,
             max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> LocalServer:
    database = Path(data_dir or user_data_dir()) / DB_NAME
    store = ConversationStore(database)
    service = OpenAIService(engine, aliases=aliases, max_queue=max_queue, default_max_tokens=max_tokens,
                            current_date=current_date)
    workspace = Workspace(engine, store, max_tokens=max_tokens, temperature=page_temperature)
    page = PageService(workspace, model_id=service.model_id)
    guard = HostCheckConfig(bind=bind, allowed_hosts=allow_hosts, allowed_origins=allow_origins)
    app = create_app(service, api_key=api_key, guard=guard, max_body_bytes=max_body_bytes)
    add_page(app, page)
    return LocalServer(app, service, page, workspace, database)
