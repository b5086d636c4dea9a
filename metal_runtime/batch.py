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

import mlx.core as mx

from .model import Model
from .sequence import Sequence


@dataclass
class _Row:
    seq: Sequence
    next_input: int  # the token the next step feeds (not yet in the cache)


@dataclass
class StepResult:
    tokens: list[tuple[Sequence, int]] = field(default_factory=list)  # the token each sequence drew this step


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
        """One token for every sequence, in one forward pass. Recording the tokens (and ending sequences
        by `Sequence.finish_reason`) is the caller's: it also hands them out."""
        rows = list(self._rows.values())
        result = StepResult()
        if not rows:
            return result
        inputs = mx.array([[r.next_input] for r in rows])
        logits = self.model(inputs, [r.seq.kv for r in rows])[:, -1, :]
        drawn = mx.concatenate([r.seq.sampler(logits[b : b + 1], len(r.seq.generated)) for b, r in enumerate(rows)])
        for r, tok in zip(rows, drawn.tolist()):
            r.next_input = tok
            result.tokens.append((r.seq, tok))
        return result
