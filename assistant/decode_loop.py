"""The engine's decode thread: admits requests, prefills with prompt reuse, decodes them together.

A request moves through: waiting (no free prompt cache, or its KV would not fit the budget) ->
prefill (its new prompt tokens fed in chunks; while others decode, one bounded chunk per step) ->
decoding. A lone decoding request runs through `metal_runtime.generate` (pipelined, speculative);
as soon as another one is ready to decode, both continue in `metal_runtime.BatchDecoder`, one
forward pass per token for all; when one is left it goes back to the single-sequence loop. Every
token goes through the request's harmony parser; events travel to the caller's thread by a queue.

Switching a request between the two loops keeps its cache exact: the single-sequence loop may have
fed the last token it yielded (pipelining) -- then that position is trimmed (exact: rings keep one
position of slack) and re-fed by the batch step; draft tokens it already verified are drained first.

With a `Lockstep` (a model spread over several ranks, lockstep.py) the loop decodes one request at a
time and every decision that other ranks must mirror goes through it: rank 0 runs this thread and
broadcasts each request as it starts; the other ranks run `follow()`, the same code on the same
messages, so every rank runs the same forward passes and keeps the same caches.
"""

from __future__ import annotations

import atexit
import itertools
import queue
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import mlx.core as mx

from gptoss_metal.harmony_io import Done, StreamParser
from gptoss_metal.metal_runtime import GenerationStats, Model, RuntimeUserError, generate
from gptoss_metal.metal_runtime.batch import BatchDecoder
from gptoss_metal.metal_runtime.generate import default_prefill_chunk
from gptoss_metal.metal_runtime.prompt_cache import PromptCache, common_prefix
from gptoss_metal.metal_runtime.sampling import SamplerState

from .lockstep import CLOSE, HEARTBEAT_S, IDLE, REQUEST, Lockstep, RequestMessage

END = object()
JOIN_CHUNK = 256  # prompt tokens prefilled per step while other requests are decoding
_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """One generation: what the caller asked for, and the decode thread's state for it."""

    prompt: list[int]
    forced_prefix: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: Optional[int]
    tools: Optional[list[str]]
    stop_ids: tuple[int, ...]
    stats: Any  # TurnStats
    speculate: bool
    should_stop: Optional[Callable[[], bool]] = None
    cache_key: Optional[str] = None
    events: "queue.Queue[Any]" = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    key: int = field(default_factory=lambda: next(_ids))
    submitted: float = field(default_factory=time.perf_counter)
    # decode-thread state
    slot: Optional[PromptCache] = None
    held: list[int] = field(default_factory=list)  # tokens the cache held and this prompt reuses
    to_feed: list[int] = field(default_factory=list)  # the rest of the prompt (+ forced prefix)
    fed: int = 0  # how many of to_feed[:-1] are in the cache
    generated: list[int] = field(default_factory=list)
    parser: Optional[StreamParser] = None
    ended: bool = False  # the parser emitted Done
    mode: str = "waiting"  # waiting | prefill | ready | solo | batch
    solo: Optional[Iterator[int]] = None
    solo_stats: Optional[GenerationStats] = None
    sampler: Optional[SamplerState] = None
    prefill_started: float = 0.0
    first_token_at: Optional[float] = None
    prefill_chunk: Optional[int] = None  # None: this backend's default
    stopping_all: bool = False  # lockstep: rank 0 forced a stop id on every rank; tokens are drained
    drained: list[int] = field(default_factory=list)  # fed to the cache after the stop, never delivered

    def cancel(self) -> None:
        self.cancelled.set()

    def put(self, item: Any) -> None:
        self.events.put(item)

    @property
    def stopping(self) -> bool:
        return self.cancelled.is_set() or (self.should_stop is not None and self.should_stop())

    @property
    def worst_case_tokens(self) -> int:
        return len(self.prompt) + len(self.forced_prefix) + self.max_tokens

    @property
    def sequence(self) -> list[int]:
        """Every token this request put into its cache, in order (once its prompt is in)."""
        return self.held + self.to_feed + self.generated + self.drained

    def message(self) -> RequestMessage:
        return RequestMessage(self.prompt, self.forced_prefix, self.max_tokens, self.temperature, self.top_p,
                              Lockstep.resolve_seed(self.seed), self.tools, list(self.stop_ids), self.speculate,
                              self.prefill_chunk or default_prefill_chunk())

    @classmethod
    def from_message(cls, m: RequestMessage, stats: Any) -> "Request":
        return cls(prompt=m.prompt, forced_prefix=m.forced_prefix, max_tokens=m.max_tokens, temperature=m.temperature,
                   top_p=m.top_p, seed=m.seed, tools=m.tools, stop_ids=tuple(m.stop_ids), stats=stats,
                   speculate=m.speculate, prefill_chunk=m.prefill_chunk)


class DecodeLoop:
    def __init__(self, model: Model, slots: list[PromptCache], max_sequences: int = 1,
                 kv_budget_bytes: Optional[int] = None, lockstep: Optional[Lockstep] = None):
        if lockstep is not None and (len(slots) != 1 or max_sequences != 1):
            raise ValueError("a model spread over several ranks decodes one sequence at a time (max_sequences=1)")
        self.lockstep = lockstep
        self.model = model
        self.slots = slots
        self.max_sequences = max_sequences
        self.key_of: dict[int, Optional[str]] = {}  # id(slot) -> the cache_key that used it last
        self.kv_budget = kv_budget_bytes
        self.waiting: deque[Request] = deque()
        self.active: list[Request] = []
        self.busy: set[int] = set()  # id() of slots in use
        self.last_used: dict[int, float] = {id(s): 0.0 for s in slots}
        self.last_slot: Optional[PromptCache] = None
        self.decoder = BatchDecoder(model)
        self._cv = threading.Condition()
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    # -- the caller's side ----------------------------------------------------------------------

    def submit(self, req: Request) -> None:
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self.waiting.append(req)
            self._start_thread()
            self._cv.notify()

    def start(self) -> None:
        """Start the decode thread before the first request (rank 0 of a group: it sends heartbeats)."""
        with self._cv:
            self._start_thread()

    def _start_thread(self) -> None:
        if self._thread is None:
            target = self._run if self.lockstep is None else self._lead
            self._thread = threading.Thread(target=target, name="gptoss-decode", daemon=True)
            self._thread.start()
            _LIVE.add(self)

    @property
    def active_count(self) -> int:
        return len(self.active)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for r in list(self.waiting) + list(self.active):
                r.cancel()
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- the decode thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            # MLX streams belong to the thread that made them: destroy them here, not at interpreter
            # exit (a stream of a finished thread destroyed then aborts the process)
            mx.synchronize()
            mx.clear_streams()

    def _serve(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self.waiting and not self.active:
                    self._cv.wait()
                if self._closed and not self.active and not self.waiting:
                    return
                self._drop_cancelled_waiting()
                self._admit()
            try:
                self._iteration()
            except Exception as e:  # noqa: BLE001 - a bug or a device error: fail the requests, keep serving
                for r in list(self.active):
                    self._finish(r, error=e)

    # -- a model spread over several ranks (lockstep.py) -----------------------------------------------

    def _lead(self) -> None:
        """Rank 0's decode thread: broadcast each request as it starts, heartbeats while idle, the close."""
        try:
            beat = time.monotonic()
            while True:
                with self._cv:
                    if not self._closed and not self.waiting:
                        self._cv.wait(HEARTBEAT_S)
                    self._drop_cancelled_waiting()
                    closing = self._closed and not self.waiting
                    req = None
                    if self.waiting and self._fits(self.waiting[0], self.slots[0]):
                        req = self.waiting.popleft()
                if closing:
                    self.lockstep.send(CLOSE)
                    return
                if req is None:
                    if time.monotonic() - beat >= HEARTBEAT_S:
                        self.lockstep.send(IDLE)
                        beat = time.monotonic()
                    continue
                msg = req.message()
                req.seed, req.prefill_chunk = msg.seed, msg.prefill_chunk
                self.lockstep.send(REQUEST, msg)
                self._run_alone(req)
                beat = time.monotonic()
        except BaseException as e:  # noqa: BLE001 - the group cannot go on without rank 0's loop
            self.lockstep.fatal(e)
        finally:
            mx.synchronize()
            mx.clear_streams()  # as in _run

    def follow(self, stats_factory: Callable[[], Any] = GenerationStats) -> None:
        """A follower rank: run exactly what rank 0 runs, request by request, until rank 0 closes."""
        while True:
            kind, msg = self.lockstep.receive()
            if kind == CLOSE:
                return
            if kind == REQUEST:
                self._run_alone(Request.from_message(msg, stats_factory()))

    def _run_alone(self, req: Request) -> None:
        self._start(req, self.slots[0])
        while req in self.active:
            with self.lockstep.deadline("generating with the other ranks"):
                self._step_alone(req)

    def _step_alone(self, r: Request) -> None:
        """One iteration of the only request: a prefill chunk (rank 0 says first whether to stop), or a token."""
        if r.mode == "prefill":
            if self.lockstep.agree(r.stopping):
                self._finish(r)
                return
            try:
                self._prefill_step(r, bounded=False)
            except Exception as e:  # noqa: BLE001
                self._request_failed(r, e)
                return
            if r.mode != "ready":
                return
        self._solo_step(r)

    def _request_failed(self, r: Request, e: BaseException) -> None:
        """One request's failure ends that request; in a group anything but a user error ends the group
        (a lost rank surfaces here as an MLX error, and the ranks could no longer agree)."""
        if self.lockstep is not None and not isinstance(e, RuntimeUserError):
            self.lockstep.fatal(e)
        self._finish(r, error=e)

    def _drop_cancelled_waiting(self) -> None:
        for r in [r for r in self.waiting if r.stopping or self._closed]:
            self.waiting.remove(r)
            r.released.set()
            r.put(END)

    # admission ------------------------------------------------------------------------------------

    def _kv_bytes(self, tokens: int) -> int:
        a = self.model.args
        return a.kv_bytes(tokens, self.model.dtype.size)

    def _fits(self, req: Request, slot: PromptCache) -> bool:
        if self.kv_budget is None:
            return True
        need = self._kv_bytes(req.worst_case_tokens)
        used = sum(self._kv_bytes(len(s.tokens) if id(s) not in self.busy else 0) for s in self.slots if s is not slot)
        used += sum(self._kv_bytes(r.worst_case_tokens) for r in self.active)
        if used + need <= self.kv_budget:
            return True
        # drop idle caches (oldest first) to make room
        idle = sorted((s for s in self.slots if id(s) not in self.busy and s is not slot and s.tokens),
                      key=lambda s: self.last_used[id(s)])
        for s in idle:
            used -= self._kv_bytes(len(s.tokens))
            s.reset()
            if used + need <= self.kv_budget:
                return True
        return not self.active and need <= self.kv_budget  # alone it must fit; else wait for others to end

    def _admit(self) -> None:
        while self.waiting and len(self.active) < self.max_sequences:
            free = [s for s in self.slots if id(s) not in self.busy]
            if not free:
                return
            req = self.waiting[0]
            slot = self._choose_slot(free, req.prompt + req.forced_prefix, req.cache_key)
            if not self._fits(req, slot):
                return
            self.waiting.popleft()
            self._start(req, slot)

    def _choose_slot(self, free: list[PromptCache], prompt: list[int], key: Optional[str]) -> PromptCache:
        """The cache this conversation (`key`) used last; else a cache whose conversation this prompt
        continues (it contains that cache's last prompt in full); else an empty one; else the least
        recently used (a shared system prompt is still reused from it)."""
        if key is not None:
            mine = [s for s in free if self.key_of.get(id(s)) == key]
            if mine:
                return mine[0]
        candidates = [s for s in free if s.tokens and (key is None or self.key_of.get(id(s)) in (None, key))]
        shared = {id(s): common_prefix(s.tokens, prompt) for s in candidates}
        continued = [s for s in candidates if shared[id(s)] >= _last_prompt_end(s)]
        if continued:
            return max(continued, key=lambda s: shared[id(s)])
        empty = [s for s in free if not s.tokens]
        if empty:
            return empty[0]
        return min(free, key=lambda s: self.last_used[id(s)])

    def _start(self, req: Request, slot: PromptCache) -> None:
        self.busy.add(id(slot))
        self.key_of[id(slot)] = req.cache_key
        self.active.append(req)
        req.slot = slot
        self.last_slot = slot
        prompt = req.prompt + req.forced_prefix
        st = req.stats
        st.queued_seconds = time.perf_counter() - req.submitted
        try:
            reuse = slot.prepare(prompt)
        except Exception as e:  # noqa: BLE001
            self._request_failed(req, e)
            return
        req.held, req.to_feed = list(slot.tokens), reuse.to_feed
        st.prompt_tokens = len(req.prompt)
        st.reused_tokens = reuse.reused
        st.prefilled_tokens = len(reuse.to_feed)
        req.parser = StreamParser(req.tools)
        if self.lockstep is None:
            req.sampler = SamplerState(req.temperature, req.top_p, req.seed)
        else:
            req.sampler = self.lockstep.sampler(req.temperature, req.top_p, req.seed)
        req.prefill_started = time.perf_counter()
        for t in req.forced_prefix:
            for ev in req.parser.feed(t):
                req.put(ev)
        req.mode = "prefill"

    # one iteration --------------------------------------------------------------------------------

    def _iteration(self) -> None:
        for r in [r for r in self.active if r.stopping]:
            self._finish(r)
        prefilling = [r for r in self.active if r.mode == "prefill"]
        decoding = [r for r in self.active if r.mode in ("ready", "solo", "batch")]
        if prefilling:
            r = prefilling[0]
            try:
                self._prefill_step(r, bounded=bool(decoding))
            except Exception as e:  # noqa: BLE001 - this request's failure (e.g. context overflow)
                self._finish(r, error=e)
            decoding = [r for r in self.active if r.mode in ("ready", "solo", "batch")]
        if len(decoding) == 1:
            self._solo_step(decoding[0])
        elif decoding:
            self._batch_step(decoding)

    def _prefill_step(self, r: Request, bounded: bool) -> None:
        body = r.to_feed[:-1]
        chunk = JOIN_CHUNK if bounded else (r.prefill_chunk or default_prefill_chunk())
        if r.fed < len(body):
            part = body[r.fed : r.fed + chunk]
            self.model(mx.array([part]), r.slot.cache)
            mx.eval(r.slot.cache.state_arrays())
            r.fed += len(part)
            r.slot.sync(r.held + body[: r.fed])
        if r.fed >= len(body):
            r.slot.checkpoint()  # where this prompt ends: the next turn diverges right after it
            r.mode = "ready"

    def _solo_step(self, r: Request) -> None:
        """One token of a lone request from the single-sequence loop (pipelined, speculative)."""
        if self.lockstep is not None and not r.stopping_all and r.stopping:
            # rank 0's caller stopped it: every rank's generation ends at the same step, on a forced stop id
            # (without stop ids it runs to its token budget; rank 0 drains it all the same)
            if r.stop_ids:
                r.sampler.force(r.stop_ids[0])
            r.stopping_all = True
        try:
            if r.mode != "solo":  # enter it: from a finished prefill, or back from the batch
                if r.mode == "batch":
                    first = self.decoder.remove(r.key).next_input
                else:
                    first = r.to_feed[-1]
                context = r.held + r.to_feed + r.generated
                r.solo_stats = _merge_speculation(r.stats, r.solo_stats)
                r.solo = generate(self.model, [first], max_tokens=r.max_tokens - len(r.generated),
                                  cache=r.slot.cache, sampler=r.sampler, stop_ids=r.stop_ids, stats=r.solo_stats,
                                  speculate=r.speculate, history=context[: len(context) - 1])
                r.mode = "solo"
            tok = next(r.solo)
        except StopIteration:
            self._finish(r)
            return
        except Exception as e:  # noqa: BLE001 - this request's failure
            self._request_failed(r, e)
            return
        if r.stopping_all:
            r.drained.append(tok)
            return
        self._dispatch(r, tok)

    def _leave_solo(self, r: Request) -> Optional[int]:
        """Stop the single-sequence loop for `r`; the token the next batch step must feed (None: it ended)."""
        gen, r.solo = r.solo, None
        if gen is None:
            return r.to_feed[-1]
        fed_target = len(r.held) + len(r.to_feed) + len(r.generated)  # every yielded token in the cache
        try:
            while r.slot.cache.offset > fed_target:  # drafts it verified and kept: hand them out first
                self._dispatch(r, next(gen))
                fed_target += 1
        except StopIteration:
            return None
        finally:
            gen.close()
        if not r.generated:
            return r.to_feed[-1]
        if r.slot.cache.offset == fed_target:
            r.slot.cache.trim(1)  # the pipelined step fed the last token already: the batch feeds it again
        r.slot.sync(r.held + r.to_feed + r.generated)
        return r.generated[-1]

    def _close_solo(self, r: Request) -> list[int]:
        """End the single-sequence loop of a finishing request; the tokens it fed but never handed out.

        Verified drafts sit in the cache before they are yielded; taking them (undelivered) keeps the
        cache's token list exact instead of trimming more than a ring can take back.
        """
        gen, r.solo = r.solo, None
        extra: list[int] = []
        if gen is None:
            return extra
        fed_target = len(r.sequence)
        try:
            while r.slot.cache.offset > fed_target + len(extra):
                extra.append(next(gen))
        except StopIteration:
            pass
        finally:
            gen.close()
        return extra

    def _batch_step(self, decoding: list[Request]) -> None:
        for r in decoding:
            if r.mode == "solo":
                nxt = self._leave_solo(r)
                if nxt is None or r.stopping or len(r.generated) >= r.max_tokens or \
                        (r.generated and r.generated[-1] in r.stop_ids):
                    self._finish(r)
                    continue
            elif r.mode == "ready":
                nxt = r.to_feed[-1]
            else:
                continue
            self.decoder.add(r.key, nxt, r.slot.cache, r.sampler, max_tokens=r.max_tokens - len(r.generated),
                             stop_ids=r.stop_ids)
            r.mode = "batch"
        if len(self.decoder) == 0:
            return
        result = self.decoder.step()
        by_key = {r.key: r for r in self.active}
        for key, tok in result.tokens.items():
            self._dispatch(by_key[key], tok)
        for seq in result.finished:
            self._finish(by_key[seq.key])

    # tokens, events, the end ---------------------------------------------------------------------

    def _dispatch(self, r: Request, tok: int) -> None:
        now = time.perf_counter()
        if r.first_token_at is None:
            r.first_token_at = now
            r.stats.prefill_seconds = r.stats.first_token_seconds = now - r.prefill_started
        else:
            r.stats.decode_seconds = now - r.first_token_at
        r.generated.append(tok)
        r.stats.generated = r.generated
        r.stats.generated_tokens = len(r.generated)
        for ev in r.parser.feed(tok):
            if isinstance(ev, Done):
                r.ended = True
            r.put(ev)

    def _finish(self, r: Request, error: Optional[BaseException] = None) -> None:
        if r not in self.active:
            return
        self.active.remove(r)
        if r.mode == "batch":
            self.decoder.remove(r.key)
        undelivered = self._close_solo(r)
        st = r.stats
        _merge_speculation(st, r.solo_stats)
        reason = None
        if r.generated and r.generated[-1] in r.stop_ids:
            reason, st.stop_token = "stop", r.generated[-1]
        elif len(r.generated) >= r.max_tokens or (r.slot is not None and r.mode != "prefill"
                                                  and len(r.held) + len(r.to_feed) + len(r.generated)
                                                  > self.model.args.max_position_embeddings):
            reason = "length"
        st.finish_reason = reason
        if r.slot is not None:
            # whatever happened (stop, length, cancel, error), the cache and its token list agree
            fed = r.sequence + undelivered if r.mode != "prefill" else r.held + r.to_feed[: r.fed]
            r.slot.sync(fed)
            mx.eval(r.slot.cache.state_arrays())  # MLX streams are per thread: leave nothing lazy behind
            self.busy.discard(id(r.slot))
            self.last_used[id(r.slot)] = time.perf_counter()
        if error is not None:
            r.put(error)
        elif not r.ended and r.mode != "prefill" and not r.cancelled.is_set():
            for ev in r.parser.finish("length" if reason == "length" else "stop"):
                r.put(ev)
        r.released.set()
        r.put(END)
        with self._cv:
            self._cv.notify()


_LIVE: "weakref.WeakSet[DecodeLoop]" = weakref.WeakSet()


@atexit.register
def _close_live_loops() -> None:
    """End every decode thread before the interpreter goes (see `_run`)."""
    for loop in list(_LIVE):
        loop.close()


def _merge_speculation(total: Any, part: Optional[GenerationStats]) -> GenerationStats:
    """Add a finished single-sequence run's speculation counts to the request's; a fresh stats object."""
    if part is not None:
        total.verifications += part.verifications
        total.drafted_tokens += part.drafted_tokens
        total.accepted_tokens += part.accepted_tokens
    return GenerationStats()


def _last_prompt_end(slot: PromptCache) -> int:
    """Where the cache's last prompt ended (its latest snapshot), or all it holds."""
    return max((n for n, _ in slot.snapshots), default=len(slot.tokens))

