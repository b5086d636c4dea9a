"""The responses a server remembers: what `previous_response_id` continues (bounded, newest kept)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class ResponseStore(OrderedDict):
    """The conversations of the latest responses, by response id (what `previous_response_id` continues)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def put(self, key: str, conversation: list[dict[str, Any]]) -> None:
        self[key] = conversation
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)
