"""The generation loop: chunked prefill, pipelined decode, stop ids, statistics.

Pipelining: while the host hands token n to the caller, the device already computes token n+1
(its graph is built from token n's lazy array and queued with `mx.async_eval`). Consequently
the cache always holds the prompt and every yielded token, except the last one when generation
ended by `max_tokens` (then it was never fed); `cache.offset` tells which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

import mlx.core as mx

from .cache import ModelCache
from .errors import ContextOverflowError, GenerationError
from .model import Model
from .sampling import Sampler, make_sampler

DEFAULT_PREFILL_CHUNK = 512


@dataclass
class GenerationStats:
    """Filled in while a generation runs; read it after (or during) iteration."""

    prompt_tokens: int = 0
    prefilled_tokens: int = 0  # prompt tokens actually computed (the rest came from the cache)
    prefill_seconds: float = 0.0
    generated_tokens: int = 0
    decode_seconds: float = 0.0
    first_token_seconds: float = 0.0
    finish_reason: Optional[str] = None  # "stop" | "length"
    stop_token: Optional[int] = None
    generated: list[int] = field(default_factory=list)

    @property
    def prefill_tps(self) -> float:
        return self.prefilled_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        n = self.generated_tokens - 1  # the first token's time is part of time-to-first-token
        return n / self.decode_seconds if self.decode_seconds > 0 and n > 0 else 0.0


def prefill(model: Model, tokens: Sequence[int], cache: ModelCache, chunk: int = DEFAULT_PREFILL_CHUNK) -> None:
    """Feed tokens into the cache in bounded chunks (memory does not grow with the prompt)."""
    for start in range(0, len(tokens), chunk):
        model(mx.array([list(tokens[start : start + chunk])]), cache)
        mx.eval(cache.state_arrays())


def generate(
    model: Model,
    prompt_ids: Sequence[int],
    *,
    max_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: Optional[int] = None,
    stop_ids: Iterable[int] = (),
    cache: Optional[ModelCache] = None,
    sampler: Optional[Sampler] = None,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    stats: Optional[GenerationStats] = None,
) -> Iterator[int]:
    """Yield generated token ids until a stop id (yielded too) or `max_tokens`.

    With `cache`, `prompt_ids` continue what the cache already holds (callers doing prompt
    reuse pass only the new tokens). Stops early, with finish_reason "length", at the model's
    context limit.
    """
    prompt = list(prompt_ids)
    if not prompt:
        raise GenerationError("the prompt is empty")
    if max_tokens < 1:
        raise GenerationError(f"max_tokens must be >= 1, got {max_tokens}")
    vocab = model.args.vocab_size
    if min(prompt) < 0 or max(prompt) >= vocab:
        raise GenerationError(f"prompt token ids must be in [0, {vocab})")
    stats = stats if stats is not None else GenerationStats()
    cache = cache if cache is not None else model.make_cache()
    limit = model.args.max_position_embeddings
    if cache.offset + len(prompt) > limit:
        raise ContextOverflowError(
            f"prompt of {cache.offset + len(prompt)} tokens exceeds the model's context of {limit}"
        )
    max_tokens = min(max_tokens, limit - cache.offset - len(prompt) + 1)
    sample = sampler if sampler is not None else make_sampler(temperature, top_p, seed)
    stops = frozenset(stop_ids)
    stats.prompt_tokens = len(prompt)
    stats.prefilled_tokens = len(prompt)

    t0 = time.perf_counter()
    prefill(model, prompt[:-1], cache, prefill_chunk)

    def step(tokens: mx.array) -> mx.array:
        logits = model(tokens, cache)[:, -1, :]
        return sample(logits)

    y = step(mx.array([prompt[-1:]]))
    mx.async_eval(y)
    t_first: Optional[float] = None
    n = 0
    while True:
        n += 1
        nxt = None
        if n < max_tokens:
            nxt = step(y[:, None])
            mx.async_eval(nxt)
        token = int(y.item())
        now = time.perf_counter()
        if t_first is None:
            t_first = now
            stats.prefill_seconds = stats.first_token_seconds = now - t0
        else:
            stats.decode_seconds = now - t_first
        stats.generated_tokens = n
        stats.generated.append(token)
        if token in stops:
            stats.finish_reason, stats.stop_token = "stop", token
            yield token
            return
        if nxt is None:
            stats.finish_reason = "length"
            yield token
            return
        yield token
        y = nxt
