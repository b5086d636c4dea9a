"""Several sequences decoded together: one forward pass feeds one token of every decoding sequence.

Each sequence keeps its own KV cache (so prompt reuse per conversation keeps working), its own sampler
(parameters and PRNG key chain: a seed reproduces a request whatever else runs beside it), its own
stop ids and token budget. The dense projections, the experts and the unembedding run once for the
whole batch -- on a GPU that reads the weights once instead of once per request; attention runs per
sequence on its own cache (model.py). The caller prefills a new sequence's prompt in bounded chunks
between steps (so it never stalls the others for long) and adds it when only its last token is left.

Knows token ids only; the caller (assistant.engine) turns tokens into events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Optional, Sequence

import mlx.core as mx

from .cache import ModelCache
from .errors import ContextOverflowError, GenerationError
from .generate import GenerationStats
from .model import Model
from .sampling import SamplerState

@dataclass
class BatchSequence:
    """One sequence in the batch; `stats.generated` are its tokens so far (this decoder's part)."""

    key: Hashable
    cache: ModelCache
    sampler: SamplerState
    max_tokens: int
    stop_ids: frozenset[int]
    next_input: int  # the token the next step feeds (not yet in the cache)
    stats: GenerationStats = field(default_factory=GenerationStats)


@dataclass
class StepResult:
    tokens: dict[Hashable, int]  # the token each sequence produced this step
    finished: list[BatchSequence]  # sequences that ended this step (stop id or budget)


class BatchDecoder:
    """Decode steps for a set of sequences whose prompts are already in their caches."""

    def __init__(self, model: Model):
        self.model = model
        self.sequences: dict[Hashable, BatchSequence] = {}

    def add(self, key: Hashable, next_input: int, cache: ModelCache, sampler: SamplerState, *,
            max_tokens: int, stop_ids: Sequence[int] = ()) -> BatchSequence:
        """Decode from `next_input` (the token after what `cache` holds) beside the others."""
        if max_tokens < 1:
            raise GenerationError(f"max_tokens must be >= 1, got {max_tokens}")
        limit = self.model.args.max_position_embeddings
        if cache.offset + 1 > limit:
            raise ContextOverflowError(f"{cache.offset + 1} positions exceed the model's context of {limit}")
        seq = BatchSequence(key, cache, sampler, min(max_tokens, limit - cache.offset), frozenset(stop_ids),
                            int(next_input))
        self.sequences[key] = seq
        return seq

    def remove(self, key: Hashable) -> Optional[BatchSequence]:
        """Take a sequence out. Its cache holds everything before its `next_input`."""
        return self.sequences.pop(key, None)

    def __len__(self) -> int:
        return len(self.sequences)

    def step(self) -> StepResult:
        """One token for every sequence, in one forward pass."""
        result = StepResult({}, [])
        seqs = list(self.sequences.values())
        if not seqs:
            return result
        inputs = mx.array([[s.next_input] for s in seqs])
        logits = self.model(inputs, [s.cache for s in seqs])[:, -1, :]
        tokens = mx.concatenate([s.sampler(logits[b : b + 1]) for b, s in enumerate(seqs)])
        for s, tok in zip(seqs, tokens.tolist()):
            st = s.stats
            st.generated.append(tok)
            st.generated_tokens = len(st.generated)
            result.tokens[s.key] = tok
            s.next_input = tok
            if tok in s.stop_ids:
                st.finish_reason, st.stop_token = "stop", tok
            elif st.generated_tokens >= s.max_tokens:
                st.finish_reason = "length"
            if st.finish_reason is not None:
                result.finished.append(s)
                del self.sequences[s.key]
        return result
