"""The responses a server remembers (bounded, newest kept): what `previous_response_id` continues, and
what `GET /v1/responses/{id}` and its `/input_items` return. A request with `store: false` is not kept."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class StoredResponse:
    conversation: list[dict[str, Any]]  # chat-shaped messages through this response's turn
    response: dict[str, Any]  # the response object as returned
    input_items: list[dict[str, Any]]  # this request's input, as items with ids


class ResponseStore(OrderedDict):
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def put(self, key: str, stored: StoredResponse) -> None:
        self[key] = stored
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)

    def conversation(self, key: str) -> Optional[list[dict[str, Any]]]:
        stored = self.get(key)
        return stored.conversation if stored is not None else None
