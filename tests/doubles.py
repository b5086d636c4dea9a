"""A scripted model double: the Model interface (tokens + cache -> logits), emitting given replies.

It drives the real generation loop, prompt cache and parser deterministically. Its KV "values"
are the token ids themselves, so tests can read back exactly which tokens a cache holds after
trims and snapshot restores.
"""

from __future__ import annotations

import threading
from collections import deque
from types import SimpleNamespace
from typing import Iterable

import mlx.core as mx
import numpy as np

from gptoss_metal.metal_runtime.cache import FullCache, ModelCache

VOCAB = 201088
FILLER = 200007  # what the double says when no script is active (never read by a correct loop)


class ScriptedModel:
    def __init__(self, replies: Iterable[list[int]] = (), window: int = 4, hold_at: int | None = None):
        self.args = SimpleNamespace(vocab_size=VOCAB, max_position_embeddings=131072, sliding_window=window,
                                    num_hidden_layers=2)
        self.replies: deque[list[int]] = deque(replies)
        self.current: list[int] = []
        self.reply_start = 0
        self.expect: int | None = -1
        self.verify_range: tuple[int, int] | None = None
        self.generations = 0
        self.decoded = 0  # one-token forward passes run (how far generation really went)
        self.window = window
        # the decode thread stops inside its `hold_at`-th one-token pass (counted over the model's life)
        # until the test sets `release`: a generation is then certainly in progress, at a known point
        self.hold_at = hold_at
        self.reached, self.release = threading.Event(), threading.Event()

    def add_reply(self, tokens: list[int]) -> None:
        self.replies.append(list(tokens))

    def make_cache(self, trim_slack: int = 0) -> ModelCache:
        return ModelCache(["sliding_attention", "full_attention"], self.window, trim_slack)

    def __call__(self, tokens: mx.array, cache: ModelCache | None = None) -> mx.array:
        B, T = tokens.shape
        start = cache.offset if cache is not None else 0
        if cache is not None:
            kv = tokens.astype(mx.float32).reshape(B, 1, T, 1)
            for layer in cache.layers:
                layer.update_and_fetch(kv, kv)
        verifying = cache is not None and any(getattr(c, "defer", False) for c in cache.layers)
        continuing = start == self.expect or verifying or (
            self.verify_range is not None and self.verify_range[0] <= start <= self.verify_range[1])
        self.verify_range = None
        if T == 1 and not continuing and self.replies:  # a new prompt was fed: next reply
            self.current, self.reply_start = self.replies.popleft(), start
            self.generations += 1
        rows = []
        for i in range(T):
            j = start + i - self.reply_start  # how far into the reply this input's prediction is
            nxt = self.current[j] if (T == 1 or continuing) and 0 <= j < len(self.current) else FILLER
            row = mx.full((VOCAB,), -1e9, dtype=mx.float32)
            row[nxt] = 0.0
            rows.append(row)
        if T == 1:
            self.decoded += 1
            if self.decoded == self.hold_at:
                self.reached.set()
                assert self.release.wait(120), "the test never released the model"
            self.expect = start + 1
        elif verifying:  # a speculative verification: the caller keeps a prefix of it
            self.expect, self.verify_range = None, (start + 1, start + T)
        return mx.broadcast_to(mx.stack(rows)[None], (B, T, VOCAB))


def cached_tokens(cache: ModelCache) -> list[int]:
    """Token ids held by the first full-attention layer of a double's cache."""
    full = next(c for c in cache.layers if isinstance(c, FullCache))
    if full.keys is None:
        return []
    return [int(v) for v in full.keys[0, 0, : full.offset, 0].tolist()]


class StopHungryModel(ScriptedModel):
    """A model that wants to end its turn at once: `<|return|>` is always its first choice, then `prefer`
    in order (e.g. the tokens that close JSON), then every other token alike (the lowest id wins a tie).
    Greedy decoding under a mask then shows what the mask alone makes of a model that would say nothing."""

    def __init__(self, prefer: Iterable[int] = ()):
        super().__init__()
        scores = np.full((VOCAB,), -10.0, dtype=np.float32)
        order = [200002] + list(prefer)
        for rank, tok in reversed(list(enumerate(order))):  # the earliest mention of a token wins
            scores[tok] = float(len(order) - rank)
        self.scores = scores  # numpy: MLX arrays made here would belong to this thread's stream

    def __call__(self, tokens: mx.array, cache: ModelCache | None = None) -> mx.array:
        B, T = tokens.shape
        if cache is not None:
            kv = tokens.astype(mx.float32).reshape(B, 1, T, 1)
            for layer in cache.layers:
                layer.update_and_fetch(kv, kv)
        if T == 1:
            self.decoded += 1
        return mx.broadcast_to(mx.array(self.scores)[None, None], (B, T, VOCAB))
