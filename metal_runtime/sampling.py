"""Token sampling on the device: greedy, temperature, nucleus (top-p), reproducible with a seed.

Sampling stays in MLX so that the next step can be queued before the host reads the current
token (see generate.py): the host never waits on the device between tokens.

Randomness is addressed, not consumed: the token at index n of a generation is drawn with the key
`position_key(seed, n)`, whichever loop computes it -- a plain step, a speculative verification (its
row for index n), the batched step beside other requests, or a step that was queued, thrown away when
the sequence moved to another loop, and computed again. So a seeded generation is the same alone, under
any concurrency and with or without speculation, and verifying a sampled draft is the greedy rule on
the sampled choices (a draft token is kept iff it is the token plain sampling draws at its index: the
output is plain sampling's, token for token).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import mlx.core as mx

from .errors import GenerationError

Sampler = Callable[[mx.array, int], mx.array]  # (logits [B, V], index of the token drawn) -> ids [B] (uint32)
MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def position_key(seed: int, index: int) -> mx.array:
    """The PRNG key of the token at `index` of a generation seeded `seed` (a 64-bit mix of both)."""
    h = _splitmix64(_splitmix64(seed & 0xFFFFFFFF) ^ (index & MASK64))
    return mx.array([h >> 32, h & 0xFFFFFFFF], dtype=mx.uint32)


def top_p_mask(logits: mx.array, top_p: float) -> mx.array:
    """Logits with everything outside the nucleus set to -inf.

    The nucleus is the smallest prefix of tokens sorted by probability (descending) whose mass
    reaches `top_p`; the most likely token is always kept (so top_p -> 0 is greedy).
    """
    order = mx.argsort(-logits, axis=-1)
    sorted_logits = mx.take_along_axis(logits, order, axis=-1)
    probs = mx.softmax(sorted_logits.astype(mx.float32), axis=-1, precise=True)
    mass_before = mx.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p
    keep_sorted[..., 0] = True
    keep = mx.put_along_axis(mx.zeros(logits.shape, dtype=mx.bool_), order, keep_sorted, axis=-1)
    return mx.where(keep, logits, mx.array(-float("inf"), dtype=logits.dtype))


def apply_token_bitmask(logits: mx.array, bitmask: mx.array) -> mx.array:
    """Logits with every token whose bit is clear set to -inf (structured outputs' allowed-token masks).

    `bitmask` is [..., ceil(V / 32)] int32 words (numpy or MLX): bit `t % 32` of word `t // 32` set
    means token t is allowed -- the layout grammar engines fill. A row of -1 words allows everything.
    The bits are expanded on the device, so the host uploads V/8 bytes per row, not V.
    """
    words = mx.array(bitmask, dtype=mx.int32)
    vocab = logits.shape[-1]
    if words.shape[-1] * 32 < vocab:
        raise GenerationError(f"a token bitmask of {words.shape[-1]} words cannot cover {vocab} tokens")
    bits = (words[..., None] >> mx.arange(32, dtype=mx.int32)) & 1
    allowed = bits.reshape(*words.shape[:-1], -1)[..., :vocab].astype(mx.bool_)
    return mx.where(allowed, logits, mx.array(-float("inf"), dtype=logits.dtype))


@dataclass(frozen=True)
class TokenLogprob:
    """A drawn token's log-probability under the model (log-softmax of the logits it was drawn from, before
    temperature, top-p or a mask), and the `top` most likely tokens with theirs."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class SamplerState:
    """A sampler for one generation: same seed, same logits at the same index -> same token."""

    lockstep = False  # True: other processes replay its choices, so generation decides nothing from timings

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, seed: Optional[int] = None):
        if not (temperature >= 0.0) or temperature != temperature:
            raise GenerationError(f"temperature must be >= 0, got {temperature}")
        if not (0.0 <= top_p <= 1.0):
            raise GenerationError(f"top_p must be in [0, 1], got {top_p}")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        self.seed = int(seed) & 0xFFFFFFFF

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def process(self, logits: mx.array) -> mx.array:
        """The logits of the distribution this sampler draws from (tempered, then the nucleus)."""
        logits = logits.astype(mx.float32) * (1.0 / self.temperature)
        return top_p_mask(logits, self.top_p) if self.top_p < 1.0 else logits

    def __call__(self, logits: mx.array, index: int) -> mx.array:
        """The token at `index` of the generation, for each row of logits [B, V] (one row in practice)."""
        return self.draw(logits, index)

    def targets(self, logits: mx.array, first_index: int) -> mx.array:
        """The choices after each row of logits [k+1, V], row i drawing the token at `first_index + i`
        exactly as a plain step would (uint32 [k+1]). Speculative verification (generate.py) asks the
        sampler, so that a sampler can share its choices with other processes (BroadcastSampler)."""
        if self.greedy:
            return _argmax(logits)
        return mx.concatenate([self.draw(logits[i : i + 1], first_index + i) for i in range(logits.shape[0])])

    def draw(self, logits: mx.array, index: int) -> mx.array:
        """This process's own choice (subclasses that share choices override `__call__`/`targets`, not this)."""
        if self.greedy:
            return _argmax(logits)
        return mx.random.categorical(self.process(logits), key=position_key(self.seed, index)).astype(mx.uint32)


def _argmax(logits: mx.array) -> mx.array:
    return mx.argmax(logits.astype(mx.float32), axis=-1).astype(mx.uint32)


def make_sampler(temperature: float = 1.0, top_p: float = 1.0, seed: Optional[int] = None) -> Sampler:
    return SamplerState(temperature, top_p, seed)


def choose(sampler: SamplerState, logits: mx.array, index: int, mask=None,
           top_logprobs: Optional[int] = None) -> tuple[mx.array, Optional[tuple[mx.array, mx.array, mx.array]]]:
    """Draw the token at `index` from logits [1, V], within `mask` (a packed bitmask, or None), and
    (lazily) its log-probability and the `top_logprobs` most likely tokens', all from these same logits
    (None: no logprobs). Structured outputs and logprobs take this path; plain decoding calls the sampler."""
    token = sampler(apply_token_bitmask(logits, mask) if mask is not None else logits, index)
    if top_logprobs is None:
        return token, None
    logprobs = logits.astype(mx.float32) - mx.logsumexp(logits.astype(mx.float32), axis=-1, keepdims=True)
    chosen = mx.take_along_axis(logprobs, token.astype(mx.int32)[:, None], axis=-1)[:, 0]
    k = max(top_logprobs, 1)
    top_ids = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[:, :k]
    return token, (chosen, top_ids, mx.take_along_axis(logprobs, top_ids, axis=-1))


def read_logprob(token: int, arrays: tuple[mx.array, mx.array, mx.array], top: int) -> TokenLogprob:
    """The host's view of `choose`'s logprob arrays (evaluated by now): the top ones most likely first."""
    chosen, ids, lps = arrays
    pairs = sorted(zip(ids[0].tolist(), lps[0].tolist()), key=lambda p: -p[1])[:top]
    return TokenLogprob(int(token), float(chosen[0].item()), tuple((int(i), float(v)) for i, v in pairs))
