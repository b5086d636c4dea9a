"""The generation loop: chunked prefill, pipelined decode, speculative verification, stops, statistics.

Pipelining: while the host hands token n to the caller, the device already computes the next step
(its graph is built from token n's lazy array and queued with `mx.async_eval`). A step is either a
plain decode of one token or, where prompt lookup found a draft worth checking (speculative.py), a
verification of `[token n, d1..dk]` in one pass; its accepted prefix is emitted and the cache is
rolled back exactly for the rest. The cache always holds the prompt and every yielded token, except
possibly the last one when generation ended by `max_tokens`; `cache.offset` tells which.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import mlx.core as mx

from .backend import backend_name
from .cache import ModelCache
from .errors import ContextOverflowError, GenerationError
from .model import Model
from .sampling import SamplerState, TokenLogprob, choose, make_sampler, read_logprob
from .sequence import GenerationStats, Sequence as SequenceState, TokenConstraint, context_room
from .speculative import Drafter, PromptLookupDrafter, SpeculationPolicy, accept_greedy

# Prompt tokens per prefill forward pass. Larger chunks amortize launches and let the sorted expert
# matmul read each expert once for more tokens; the bound keeps activation memory flat.
PREFILL_CHUNK = {"cpu": 512, "metal": 2048, "cuda": 2048, "gpu": 2048}
DRAFTER_WINDOW = 32768  # prompt lookup indexes at most this many recent tokens


def default_prefill_chunk() -> int:
    return PREFILL_CHUNK.get(backend_name(), 512)


def prefill(model: Model, tokens: Sequence[int], cache: ModelCache, chunk: Optional[int] = None) -> None:
    """Feed tokens into the cache in bounded chunks (memory does not grow with the prompt)."""
    chunk = chunk or default_prefill_chunk()
    for start in range(0, len(tokens), chunk):
        model(mx.array([list(tokens[start : start + chunk])]), cache)
        mx.eval(cache.state_arrays())


@dataclass
class _Verification:
    """A queued verification pass: inputs `[first, *draft]`, the sampler's choice after each input."""

    draft: list[int]
    targets: mx.array
    started: float


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
    sampler: Optional[SamplerState] = None,
    prefill_chunk: Optional[int] = None,
    stats: Optional[GenerationStats] = None,
    speculate: Union[bool, SpeculationPolicy] = True,
    history: Sequence[int] = (),
    drafter: Optional[Drafter] = None,
    first_index: int = 0,
    constraint: Optional[TokenConstraint] = None,
    logprobs: Optional[int] = None,
    on_logprob: Optional[Callable[[TokenLogprob], None]] = None,
    host_choices: bool = False,
) -> Iterator[int]:
    """Yield generated token ids until a stop id (yielded too) or `max_tokens`.

    With `cache`, `prompt_ids` continue what the cache already holds (callers doing prompt reuse
    pass only the new tokens, and the held ones as `history` so prompt lookup can draft from them).
    Stops early, with finish_reason "length", at the model's context limit. `speculate`: False turns
    prompt-lookup speculation off; True lets a fresh `SpeculationPolicy` decide per step; `drafter`
    replaces prompt lookup as the source of drafts. `first_index`: the index of the first token this
    call generates within its whole generation (a sampler's randomness is addressed by it).
    `constraint` (fed each token here) masks what may be drawn; `logprobs`: each token's logprob and that
    many alternatives go to `on_logprob` before the token is yielded. Either turns speculation off, as
    does `host_choices` (a rank of a group whose rank 0 masks its draws: it must run the same passes).
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
    max_tokens = min(max_tokens, context_room(limit, cache.offset + len(prompt)))
    sample = sampler if sampler is not None else make_sampler(temperature, top_p, seed)
    policy = speculate if isinstance(speculate, SpeculationPolicy) else (SpeculationPolicy() if speculate else None)
    if policy is not None and ((seed is not None and temperature > 0) or getattr(sample, "lockstep", False)):
        # decisions from timings would make a seeded sample irreproducible, and would differ between
        # processes that must run the same passes (a lockstep sampler: distributed.BroadcastSampler)
        policy.timed = False
    if policy is None:
        drafter = None
    else:
        drafter = drafter if drafter is not None else PromptLookupDrafter()
        drafter.extend((list(history) + prompt)[-DRAFTER_WINDOW:])
    stops = frozenset(stop_ids)
    stats.prompt_tokens = len(prompt)
    stats.prefilled_tokens = len(prompt)

    t0 = time.perf_counter()
    prefill(model, prompt[:-1], cache, prefill_chunk)

    def plain_step(token: mx.array, index: int) -> mx.array:
        return sample(model(token.reshape(1, 1), cache)[:, -1, :], index)

    def verify_step(first: mx.array, draft: list[int], index: int) -> _Verification:
        inputs = mx.concatenate([first.reshape(1).astype(mx.uint32), mx.array(draft, dtype=mx.uint32)])
        with cache.deferred_writes():
            logits = model(inputs[None], cache)[0]
        v = _Verification(draft, sample.targets(logits, index), time.perf_counter())
        mx.async_eval(v.targets)
        return v

    t_first: Optional[float] = None
    t_read: Optional[float] = None
    after_verify = False
    emitted = 0

    def emit(token: int) -> bool:
        """Record one generated token; True when generation must end after it."""
        nonlocal t_first, emitted
        emitted += 1
        now = time.perf_counter()
        if t_first is None:
            t_first = now
            stats.prefill_seconds = stats.first_token_seconds = now - t0
        else:
            stats.decode_seconds = now - t_first
        stats.generated_tokens = emitted
        stats.generated.append(token)
        if drafter is not None:
            drafter.extend([token])
        if token in stops:
            stats.finish_reason, stats.stop_token = "stop", token
            return True
        if emitted >= max_tokens:
            stats.finish_reason = "length"
            return True
        return False

    if host_choices or constraint is not None or logprobs is not None:  # each choice needs the host
        yield from _host_choices(model, cache, sample, prompt[-1], first_index, max_tokens, emit, constraint,
                                 logprobs, on_logprob)
        return

    # the next token (index first_index + emitted), not yet in the cache
    cur: Union[mx.array, int] = plain_step(mx.array(prompt[-1:]), first_index)
    mx.async_eval(cur)
    step: Union[mx.array, _Verification, None] = None
    try:
        while True:
            # queue the next step before reading the current token (the device never waits on the host)
            known = isinstance(cur, int)
            room = max_tokens - emitted - 1  # tokens that may still follow `cur`
            step = None
            if room > 0:
                draft: list[int] = []
                if drafter is not None:
                    if known:
                        draft = drafter.draft(room, after=[cur])
                    else:  # `cur` is still on the device: the draft's first token stands for it
                        draft = drafter.draft(room + 1)[1:]
                    draft = draft[: policy.draft_length(len(draft))]
                first = mx.array(cur) if known else cur
                index = first_index + emitted + 1  # of the token after `cur`
                step = verify_step(first, draft, index) if draft else plain_step(first, index)
                if not draft:
                    mx.async_eval(step)
            token = cur if known else int(cur.item())
            t_read, last_read = time.perf_counter(), t_read  # the device finished everything before `step`
            if emit(token):
                if isinstance(step, _Verification):
                    cache.settle(len(step.draft))  # keep only `token` of what the pass fed
                    step = None
                yield token
                return
            yield token
            if isinstance(step, _Verification):
                v, step = step, None
                m, nxt = accept_greedy(v.draft, v.targets.tolist())
                kept = m
                for i, d in enumerate(v.draft[:m]):  # a stop or the budget inside the accepted part ends it
                    if d in stops or emitted + i + 1 >= max_tokens:
                        kept = i + 1
                        break
                cache.settle(len(v.draft) - kept)  # the cache now holds `token` and the kept drafts
                policy.observe_verify(time.perf_counter() - t_read, len(v.draft), m)
                after_verify = True
                stats.verifications += 1
                stats.drafted_tokens += len(v.draft)
                stats.accepted_tokens += kept
                for d in v.draft[:kept]:
                    ended = emit(d)
                    yield d
                    if ended:
                        return
                cur = nxt
            else:
                if policy is not None and last_read is not None and not after_verify:
                    policy.observe_plain(t_read - last_read)  # one pipelined step per token read
                after_verify = False
                cur = step
    finally:
        if isinstance(step, _Verification):  # closed while a verification was in flight: keep `token`
            cache.settle(len(step.draft))


def _host_choices(model: Model, cache: ModelCache, sample: SamplerState, last_prompt_token: int, first_index: int,
                  max_tokens: int, emit: Callable[[int], bool], constraint: Optional[TokenConstraint],
                  logprobs: Optional[int], on_logprob: Optional[Callable[[TokenLogprob], None]]) -> Iterator[int]:
    """Decoding where each choice needs the host: a mask that depends on the token before (structured
    outputs), or logprobs to read. The forward pass of token n+1 is queued before token n is read, so
    the device computes it while the host feeds token n to the constraint and builds the next mask; only
    the (small) sampling of n+1 waits for that. The cache holds what `generate` promises: every token
    handed out, the last one fed once the next forward is queued."""
    logits = model(mx.array([[last_prompt_token]]), cache)[:, -1, :]
    index = first_index
    while True:
        mask = constraint.next_mask() if constraint is not None else None
        cur, lp = choose(sample, logits, index, mask, logprobs)
        room = max_tokens - (index - first_index) - 1  # tokens that may still follow `cur`
        logits = model(cur.reshape(1, 1), cache)[:, -1, :] if room > 0 else None
        mx.async_eval(cur, *(lp or ()), *(() if logits is None else (logits,)))  # the draw, then the next pass
        token = int(cur.item())
        if constraint is not None:
            constraint.feed(token)
        if lp is not None and on_logprob is not None:
            on_logprob(read_logprob(token, lp, logprobs))
        ended = emit(token)
        yield token
        if ended:
            return
        index += 1


class SoloRun:
    """A sequence decoded alone by `generate` (pipelined, speculative), and the exact ways out of it.

    `generate` may have fed more than it handed out: the pipelined step (the last token handed out,
    already fed to compute the next) and verified drafts it keeps in the cache before yielding them.
    `rewind` hands those drafts out and trims the pipelined position, so the sequence's cache holds
    exactly its tokens but the last, which the batched step then feeds; `close` ends the run and returns
    what it fed but never handed out (kept in the cache's token list: a ring cannot take back more than
    a position).
    """

    def __init__(self, model: Model, seq: SequenceState, first_input: int):
        self.seq = seq
        self.stats = GenerationStats()  # this run's speculation counts, added to the sequence's at the end
        context = seq.held + seq.to_feed + seq.generated
        self._logprobs: deque[TokenLogprob] = deque()
        self._gen: Optional[Iterator[int]] = generate(
            model, [first_input], max_tokens=seq.budget - len(seq.generated), cache=seq.kv,
            sampler=seq.sampler, stop_ids=seq.spec.stop_ids, stats=self.stats,
            speculate=seq.spec.speculate and not seq.host_chooses, history=context[: len(context) - 1],
            first_index=len(seq.generated), constraint=seq.constraint, logprobs=seq.spec.logprobs,
            on_logprob=self._logprobs.append, host_choices=seq.host_chooses)

    def next(self) -> Optional[tuple[int, Optional[TokenLogprob]]]:
        """The next token and its logprob (when asked for), or None when the run ended (its budget: the
        sequence's own rule says so too)."""
        try:
            token = next(self._gen)
        except StopIteration:
            return None
        return token, (self._logprobs.popleft() if self._logprobs else None)

    def rewind(self, deliver) -> Optional[int]:
        """Leave the run: `deliver(token)` each verified draft still held back; then the token the next
        (batched) step must feed, or None when the run ended meanwhile."""
        seq, cache = self.seq, self.seq.kv
        fed_target = len(seq.held) + len(seq.to_feed) + len(seq.generated)  # every handed-out token fed
        try:
            while cache.offset > fed_target:  # (never with host choices: they do not speculate)
                deliver(next(self._gen), None)
                fed_target += 1
        except StopIteration:
            return None
        finally:
            self._end()
        if not seq.generated:
            return seq.to_feed[-1]
        if cache.offset == fed_target:
            cache.trim(1)  # the pipelined step fed the last token already: the batched step feeds it again
        seq.prompt_cache.sync(seq.held + seq.to_feed + seq.generated)
        return seq.generated[-1]

    def close(self) -> list[int]:
        """End the run; the tokens it fed beyond the sequence's own (verified drafts never handed out)."""
        extra: list[int] = []
        if self._gen is None:
            return extra
        fed_target = len(self.seq.tokens)
        try:
            while self.seq.kv.offset > fed_target + len(extra):
                extra.append(next(self._gen))
        except StopIteration:
            pass
        finally:
            self._end()
        return extra

    def _end(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None
            self.seq.stats.add_speculation(self.stats)
