"""Prompt reuse across requests: keep one cache, rewind it exactly to what the next prompt shares.

Knows token ids only. The cache holds `tokens` (len == cache.offset). For a new prompt, the
longest common prefix with `tokens` is kept; the rest is dropped by trimming when that is exact
(sliding-window layers allow trimming one position, more with trim slack), else by restoring the
latest snapshot at or below the common prefix. Snapshots are taken where prompts end, which is
exactly where the next turn of a harmony conversation diverges (the model's reasoning is dropped
from history), so turn N prefills only its new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from .cache import CacheSnapshot, ModelCache
from .errors import CacheError
from .model import Model


@dataclass
class Reuse:
    reused: int  # prompt tokens already in the cache
    to_feed: list[int]  # the rest of the prompt, to prefill


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    def __init__(self, model: Model, max_snapshots: int = 4, trim_slack: int = 0):
        self.model = model
        self.trim_slack = trim_slack
        self.max_snapshots = max_snapshots
        self.reset()

    def reset(self) -> None:
        self.cache: ModelCache = self.model.make_cache(trim_slack=self.trim_slack)
        self.tokens: list[int] = []
        self.snapshots: list[tuple[int, CacheSnapshot]] = []

    def prepare(self, prompt: Sequence[int]) -> Reuse:
        """Rewind the cache to the longest reusable prefix of `prompt` (leaving >= 1 token to feed)."""
        prompt = list(prompt)
        keep = min(common_prefix(self.tokens, prompt), len(prompt) - 1)
        if keep < len(self.tokens):
            try:
                self.cache.trim(len(self.tokens) - keep)
            except CacheError:
                keep = self._restore_at_or_below(keep)
            self.tokens = self.tokens[:keep]
            self.snapshots = [(n, s) for n, s in self.snapshots if n <= keep]
        return Reuse(keep, prompt[keep:])

    def _restore_at_or_below(self, keep: int) -> int:
        for n, snap in reversed(self.snapshots):
            if n <= keep:
                try:
                    self.cache.restore(snap)
                    return n
                except CacheError:
                    continue
        self.cache = self.model.make_cache(trim_slack=self.trim_slack)
        self.snapshots = []
        return 0

    def checkpoint(self) -> None:
        """Remember the current state (call when the cache holds exactly `self.tokens`)."""
        assert self.cache.offset == len(self.tokens), "checkpoint out of sync with the cache"
        n = len(self.tokens)
        self.snapshots = [(m, s) for m, s in self.snapshots if m != n]
        self.snapshots.append((n, self.cache.snapshot()))
        del self.snapshots[: -self.max_snapshots]

    def sync(self, attempted: Sequence[int]) -> None:
        """After feeding tokens (possibly interrupted): `tokens` becomes the prefix of `attempted`
        (everything held before plus everything the caller tried to feed, in order) that the
        cache really holds. Never leaves the two out of step; resets if the cache cannot be repaired.
        """
        offset = self.cache.resync(len(attempted))
        if offset is None:
            self.reset()
            return
        self.tokens = list(attempted[:offset])
        self.snapshots = [(n, s) for n, s in self.snapshots if n <= offset]

    @property
    def nbytes(self) -> Optional[int]:
        return self.cache.nbytes
