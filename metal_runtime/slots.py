"""The prompt caches a server keeps, which one a new generation takes, and whether its KV memory fits.

A slot is one `PromptCache` (a KV cache and the tokens it holds) and who used it last. A generation goes
to the cache its conversation (`cache_key`) used last, if that is free; else to a cache whose prompt it
continues; else an empty one; else the least recently used (a shared system prompt is still reused).
With a KV budget, a generation is admitted only when its worst case fits beside the running ones; idle
caches are dropped, oldest first, to make room.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from .model import Model
from .prompt_cache import PromptCache, common_prefix


@dataclass(eq=False)
class Slot:
    cache: PromptCache
    owner: Optional[str] = None  # the cache_key that used it last
    busy: bool = False
    last_used: float = 0.0

    @property
    def last_prompt_end(self) -> int:
        """Where the cache's last prompt ended (its latest snapshot), or all it holds."""
        return max((n for n, _ in self.cache.snapshots), default=len(self.cache.tokens))


class SlotPool:
    def __init__(self, model: Model, count: int, kv_budget_bytes: Optional[int] = None, max_snapshots: int = 4):
        self.model = model
        self.slots = [Slot(PromptCache(model, max_snapshots=max_snapshots)) for _ in range(count)]
        self.kv_budget = kv_budget_bytes
        self.last: Optional[Slot] = None  # the slot the latest generation took

    def free(self) -> list[Slot]:
        return [s for s in self.slots if not s.busy]

    def choose(self, prompt: Sequence[int], key: Optional[str]) -> Optional[Slot]:
        """The free slot for a generation of conversation `key` with this prompt (None: all are busy)."""
        free = self.free()
        if not free:
            return None
        if key is not None:
            mine = [s for s in free if s.owner == key]
            if mine:
                return mine[0]
        candidates = [s for s in free if s.cache.tokens and (key is None or s.owner in (None, key))]
        shared = {id(s): common_prefix(s.cache.tokens, prompt) for s in candidates}
        continued = [s for s in candidates if shared[id(s)] >= s.last_prompt_end]
        if continued:
            return max(continued, key=lambda s: shared[id(s)])
        empty = [s for s in free if not s.cache.tokens]
        if empty:
            return empty[0]
        return min(free, key=lambda s: s.last_used)

    def _kv_bytes(self, tokens: int) -> int:
        return self.model.args.kv_bytes(tokens, self.model.dtype.size)

    def fits(self, worst_case_tokens: int, slot: Slot, running: Iterable[int]) -> bool:
        """Whether a generation needing `worst_case_tokens` positions in `slot` fits the KV budget beside
        the running ones (their worst cases); drops idle caches, oldest first, to make room."""
        if self.kv_budget is None:
            return True
        running = list(running)
        need = self._kv_bytes(worst_case_tokens)
        used = sum(self._kv_bytes(len(s.cache.tokens)) for s in self.slots if s is not slot and not s.busy)
        used += sum(self._kv_bytes(n) for n in running)
        if used + need <= self.kv_budget:
            return True
        idle = sorted((s for s in self.slots if not s.busy and s is not slot and s.cache.tokens),
                      key=lambda s: s.last_used)
        for s in idle:
            used -= self._kv_bytes(len(s.cache.tokens))
            s.cache.reset()
            if used + need <= self.kv_budget:
                return True
        return not running  # alone it runs whatever it needs (the budget shares memory, it cannot shrink a
        # generation); beside others it waits for them to end

    def take(self, slot: Slot, key: Optional[str]) -> None:
        slot.busy, slot.owner = True, key
        self.last = slot

    def release(self, slot: Slot) -> None:
        slot.busy = False
        slot.last_used = time.perf_counter()
