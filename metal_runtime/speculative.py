"""Speculative decoding by prompt lookup: draft from n-gram matches in the context, verify in one pass.

Agents and editors make the model repeat long spans of its context (code it edits, text it quotes).
`PromptLookupDrafter` finds the longest recent n-gram of the context that ends the context and
occurred before, and proposes the tokens that followed it. The model scores `[last, d1..dk]` in one
forward pass; the accepted prefix is kept and the cache is rolled back exactly for the rest
(`ModelCache.deferred_writes` / `settle`: sliding-window rings are written only once acceptance is
known, so rollback is exact even after they wrapped).

Acceptance: the pass computes, at each of its positions, the token a plain step would choose there
(the argmax, or the sample drawn with that position's key: sampling.py), and a draft token is kept
iff it equals that choice. For a deterministic draft (a point mass q) this is the standard rule --
kept with probability p(d), on rejection the choice is distributed as p with d removed -- and more:
the output is token for token what plain decoding gives, greedy or seeded.

`SpeculationPolicy` decides per step whether a draft is worth verifying, from measured step times and
the measured acceptance: it never makes generation slower by more than a few percent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence


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
