"""Speculative decoding by prompt lookup: draft from n-gram matches in the context, verify in one pass.

Agents and editors make the model repeat long spans of its context (code it edits, text it quotes).
`PromptLookupDrafter` finds the longest recent n-gram of the context that ends the context and
occurred before, and proposes the tokens that followed it. The model scores `[last, d1..dk]` in one
forward pass; the accepted prefix is kept and the cache is rolled back exactly for the rest
(`ModelCache.deferred_writes` / `settle`: sliding-window rings are written only once acceptance is
known, so rollback is exact even after they wrapped).

Acceptance is the standard rule for a deterministic draft (a point mass q): greedy keeps a draft token
iff it is the argmax; sampling keeps `d` with probability p(d) and, on rejection, samples from p with
`d` removed. Output distribution is exactly the model's; greedy output is token-identical.

`SpeculationPolicy` decides per step whether a draft is worth verifying, from measured step times and
the measured acceptance: it never makes generation slower by more than a few percent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence

import mlx.core as mx

MAX_DRAFT = 8  # draft tokens per verification pass
MAX_NGRAM = 4
MIN_NGRAM = 2  # single-token matches are too weak a signal to pay for a verification


class Drafter(Protocol):
    """A source of draft tokens: told every token of the context, asked for a continuation."""

    def extend(self, tokens: Sequence[int]) -> None: ...

    def draft(self, limit: Optional[int] = None, after: Sequence[int] = ()) -> list[int]: ...


class PromptLookupDrafter:
    """Incremental n-gram index over a token sequence; `draft()` proposes a continuation."""

    def __init__(self, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM, max_draft: int = MAX_DRAFT):
        self.max_ngram, self.min_ngram, self.max_draft = max_ngram, min_ngram, max_draft
        self.tokens: list[int] = []
        # n -> (n-gram -> end index of its latest occurrence that has a continuation)
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_ngram, max_ngram + 1)}

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            end = len(self.tokens) - 1  # the n-grams ending here now have a continuation
            self.tokens.append(int(t))
            for n, index in self._index.items():
                if end - n + 1 >= 0:
                    index[tuple(self.tokens[end - n + 1 : end + 1])] = end

    def draft(self, limit: Optional[int] = None, after: Sequence[int] = ()) -> list[int]:
        """Tokens that followed the latest earlier occurrence of the longest matching suffix of the
        context followed by `after` (tokens known but not yet added)."""
        limit = self.max_draft if limit is None else min(limit, self.max_draft)
        if limit <= 0:
            return []
        tail = (self.tokens[-self.max_ngram :] + list(after))[-self.max_ngram :]
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(tail) < n:
                continue
            end = self._index[n].get(tuple(tail[-n:]))
            if end is not None:
                return self.tokens[end + 1 : end + 1 + limit]
        return []


@dataclass
class SpeculationPolicy:
    """Verify a draft only where it is expected to pay, from what this generation measured.

    Model: a plain step costs `t_plain`; verifying k drafts costs `t_plain * (1 + c * k)`; a draft
    token is accepted with rate `r` (each accepted only if all before it were). Expected tokens per
    verification: 1 + r + r^2 + ... + r^k. Speculate with the k that maximizes tokens per unit time,
    if that beats a plain step by `margin`. Estimates are exponential moving averages; the prior is
    cautious (c = 0.5) and a probe every `probe_every` plain steps keeps them fresh.
    """

    margin: float = 1.05
    timed: bool = True  # False: keep the prior cost model (decisions then depend on tokens only)
    probe_every: int = 32
    alpha: float = 0.3
    t_plain: Optional[float] = None
    cost_per_draft: float = 0.5
    accept_rate: float = 0.6
    _since_probe: int = 0
    history: list[tuple[int, int]] = field(default_factory=list)  # (drafted, accepted) per verification

    def draft_length(self, available: int) -> int:
        """How many of `available` draft tokens to verify now (0: take a plain step)."""
        if available <= 0:
            return 0
        best_k, best_gain = 0, 1.0
        r, c = self.accept_rate, self.cost_per_draft
        for k in range(1, available + 1):
            gain = sum(r ** i for i in range(k + 1)) / (1.0 + c * k)
            if gain > best_gain:
                best_k, best_gain = k, gain
        if best_gain >= self.margin:
            return best_k
        self._since_probe += 1
        if self._since_probe >= self.probe_every:  # re-measure now and then: contexts change
            self._since_probe = 0
            return min(available, 2)
        return 0

    def _ema(self, old: float, new: float) -> float:
        return (1 - self.alpha) * old + self.alpha * new

    def observe_plain(self, seconds: float) -> None:
        self.t_plain = seconds if self.t_plain is None else self._ema(self.t_plain, seconds)

    def observe_verify(self, seconds: float, drafted: int, accepted: int) -> None:
        self.history.append((drafted, accepted))
        # per-token acceptance: of the draft tokens the verification reached, the share it kept
        reached = accepted + (1 if accepted < drafted else 0)
        if reached:
            self.accept_rate = self._ema(self.accept_rate, accepted / reached)
        if self.timed and self.t_plain:
            c = max(0.0, (seconds / self.t_plain - 1.0) / drafted)
            self.cost_per_draft = self._ema(self.cost_per_draft, c)


def accept_greedy(draft: Sequence[int], targets: Sequence[int]) -> tuple[int, int]:
    """(accepted draft tokens m, the token after them): targets[i] is the argmax after input i."""
    m = 0
    while m < len(draft) and draft[m] == targets[m]:
        m += 1
    return m, int(targets[m])


def accept_sampled(draft: Sequence[int], logits: mx.array, key: mx.array) -> tuple[int, int]:
    """The standard acceptance rule for a point-mass draft, on processed logits [k+1, V].

    Draft token d_i (proposed after input i) is kept with probability p_i(d_i); at the first
    rejection the replacement is drawn from p_i with d_i removed; if all are kept, the bonus token is
    drawn from p_k. Every random number comes from `key`, so a seed reproduces the output.
    """
    probs = mx.softmax(logits.astype(mx.float32), axis=-1, precise=True)
    k = len(draft)
    u_key, s_key = mx.random.split(key)
    u = mx.random.uniform(shape=(max(k, 1),), key=u_key)
    d = mx.array(list(draft) or [0], dtype=mx.uint32)
    p_draft = mx.take_along_axis(probs[: max(k, 1)], d[:, None], axis=-1)[:, 0]
    keep = (u < p_draft).tolist()[:k]
    m = 0
    while m < k and keep[m]:
        m += 1
    row = logits[m].astype(mx.float32)
    if m < k:  # residual distribution max(p - q, 0) with q the point mass on the rejected token
        row = mx.where(mx.arange(row.shape[-1]) == draft[m], -mx.inf, row)
    token = mx.random.categorical(row, key=s_key)
    return m, int(token.item())


@dataclass
class SpecStats:
    verifications: int = 0
    drafted: int = 0
    accepted: int = 0
    seconds: float = 0.0

    @property
    def accepted_per_verification(self) -> float:
        return self.accepted / self.verifications if self.verifications else 0.0


class Stopwatch:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t0 = now - self.t0, now
        return dt
