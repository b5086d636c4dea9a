"""Several sequences decoded together: one forward pass feeds one token of every decoding sequence.

Each sequence keeps its own KV cache (so prompt reuse per conversation keeps working), its own sampler
(its randomness is addressed by token index: a seed reproduces a request whatever else runs beside it),
its own stop ids and token budget. The dense projections, the experts and the unembedding run once for
the whole batch -- on a GPU that reads the weights once instead of once per request; attention runs per
sequence on its own cache (model.py). The serving core prefills a new sequence's prompt in bounded
chunks between steps (so it never stalls the others for long) and adds it when only its last token is
left.

Knows token ids only; it advances the same `Sequence` objects the single-sequence loop does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import mlx.core as mx

from .model import Model
from .sampling import TokenLogprob, choose, read_logprob
from .sequence import Sequence


@dataclass
class _Row:
    seq: Sequence
    next_input: int  # the token the next step feeds (not yet in the cache)


@dataclass
class StepResult:
    # the token each sequence drew this step, and its logprob when the sequence asked for them
    tokens: list[tuple[Sequence, int, Optional[TokenLogprob]]] = field(default_factory=list)


class BatchDecoder:
    """Decode steps for a set of sequences whose prompts are already in their caches."""

    def __init__(self, model: Model):
        self.model = model
        self._rows: dict[int, _Row] = {}

    def add(self, seq: Sequence, next_input: int) -> None:
        """Decode `seq` from `next_input` (the token after what its cache holds) beside the others."""
        self._rows[id(seq)] = _Row(seq, int(next_input))

    def remove(self, seq: Sequence) -> int:
        """Take a sequence out; the token its next step would have fed (its cache holds everything before)."""
        return self._rows.pop(id(seq)).next_input

    def __contains__(self, seq: Sequence) -> bool:
        return id(seq) in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def step(self) -> StepResult:
        """One token for every sequence, in one forward pass. A constrained sequence's mask is built while the
        device runs the pass, and its constraint is fed the token drawn; recording the tokens (and ending
        sequences by `Sequence.finish_reason`) is the caller's: it also hands them out."""
        rows = list(self._rows.values())
        result = StepResult()
        if not rows:
            return result
        inputs = mx.array([[r.next_input] for r in rows])
        logits = self.model(inputs, [r.seq.kv for r in rows])[:, -1, :]
        if any(r.seq.host_chooses for r in rows):
            mx.async_eval(logits)  # the forward pass runs while the host builds the masks
        drawn, logprobs = [], []
        for b, r in enumerate(rows):
            seq = r.seq
            if seq.host_chooses:
                mask = seq.constraint.next_mask() if seq.constraint is not None else None
                tok, lp = choose(seq.sampler, logits[b : b + 1], len(seq.generated), mask, seq.spec.logprobs)
            else:
                tok, lp = seq.sampler(logits[b : b + 1], len(seq.generated)), None
            drawn.append(tok)
            logprobs.append(lp)
        tokens = mx.concatenate(drawn)
        mx.eval(tokens, *(a for lp in logprobs if lp is not None for a in lp))
        for r, tok, lp in zip(rows, tokens.tolist(), logprobs):
            r.next_input = tok
            if r.seq.constraint is not None:
                r.seq.constraint.feed(tok)
            result.tokens.append((r.seq, tok, read_logprob(tok, lp, r.seq.spec.logprobs) if lp is not None else None))
        return result
