"""The serving core: one decode thread runs every generation, from admission to its last token.

Token ids only. A caller `submit`s a `SequenceSpec` with a sink (told each token and the end, on the
decode thread) and gets a `Handle` back: `cancel()` from any thread is the one way to stop a generation
(a client gone, a stop button, a timeout, shutdown), and the decode thread drops it at its next step.

A generation moves through (sequence.Phase): waiting (no free prompt cache, or its KV would not fit
the budget: slots.py) -> prefill (its new prompt tokens fed in chunks; while others decode, one bounded
chunk per step) -> decoding. A lone decoding sequence runs through the single-sequence loop
(generate.SoloRun: pipelined, speculative); as soon as another one is ready to decode, both continue in
the batched step (batch.BatchDecoder), one forward pass per token for all; when one is left it goes back
to the single-sequence loop. Both advance the same `Sequence`; moving between them is one rewind.

`coordination` (lockstep.py) is `Alone` in one process; with `Lockstep` (a model spread over ranks)
the core decodes one sequence at a time, rank 0 announces each one, and the other ranks `follow()`.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections import deque
from dataclasses import replace
from typing import Optional, Protocol, Union

import mlx.core as mx

from .errors import RuntimeUserError
from .generate import SoloRun, default_prefill_chunk
from .lockstep import CLOSE, REQUEST, Alone, Lockstep
from .model import Model
from .batch import BatchDecoder
from .sampling import TokenLogprob
from .sequence import GenerationStats, Phase, Sequence, SequenceSpec, TokenConstraint
from .slots import Slot, SlotPool

JOIN_CHUNK = 256  # prompt tokens prefilled per step while other sequences are decoding
Coordination = Union[Alone, Lockstep]


class EngineBusy(RuntimeUserError):
    """More generations are waiting than the server accepts (an API answers 429)."""


class EngineClosed(RuntimeError):
    """The core was closed (shutting down): nothing new is accepted."""


class TokenSink(Protocol):
    """Where a generation's tokens go; called on the decode thread, so it must be quick and not block."""

    def token(self, token: int, logprob: Optional[TokenLogprob]) -> None: ...

    def end(self, stats: GenerationStats, error: Optional[BaseException]) -> None: ...


class _Discard:
    def token(self, token: int, logprob: Optional[TokenLogprob]) -> None:
        pass

    def end(self, stats: GenerationStats, error: Optional[BaseException]) -> None:
        pass


class Handle:
    """A submitted generation, as its caller holds it."""

    def __init__(self, core: "ServingCore", seq: Sequence):
        self._core, self.sequence = core, seq

    @property
    def stats(self) -> GenerationStats:
        return self.sequence.stats

    def cancel(self) -> None:
        """Stop it (any thread; idempotent): the decode thread drops it at its next step."""
        if not self.sequence.cancelled.is_set():
            self.sequence.cancelled.set()
            self._core.wake()

    @property
    def done(self) -> bool:
        return self.sequence.released.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Until the decode thread is done with it (its cache is consistent and free again)."""
        return self.sequence.released.wait(timeout)


class ServingCore:
    def __init__(self, model: Model, *, slots: int = 1, max_sequences: int = 1,
                 kv_budget_bytes: Optional[int] = None, max_snapshots: int = 4, max_queue: Optional[int] = None,
                 coordination: Optional[Coordination] = None):
        self.coord: Coordination = coordination or Alone()
        if not self.coord.batches:
            slots, max_sequences = 1, 1  # ranks in lockstep decode one sequence at a time, one cache
        if max_sequences < 1 or slots < 1:
            raise ValueError("max_sequences and slots must be >= 1")
        self.model = model
        self.pool = SlotPool(model, max(slots, max_sequences), kv_budget_bytes, max_snapshots)
        self.max_sequences = max_sequences
        self.max_queue = max_queue
        self.waiting: deque[Sequence] = deque()
        self.active: list[Sequence] = []
        self.batch = BatchDecoder(model)
        self._cv = threading.Condition()
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    @property
    def context_length(self) -> int:
        return self.model.args.max_position_embeddings

    # -- the caller's side ------------------------------------------------------------------------

    def submit(self, spec: SequenceSpec, sink: Optional[TokenSink] = None,
               stats: Optional[GenerationStats] = None, constraint: Optional[TokenConstraint] = None) -> Handle:
        """Queue a generation (raises a RuntimeUserError for one that cannot run, EngineBusy when the queue
        is full, EngineClosed when shutting down). `stats` (optional): the object its figures go into;
        `constraint`: what may be drawn (structured outputs; rank 0's draws are every rank's)."""
        spec.check(self.context_length, self.model.args.vocab_size)
        spec = self.coord.resolve(replace(spec, masked=constraint is not None))
        seq = Sequence(spec, self.coord.sampler(spec), spec.budget(self.context_length), sink=sink or _Discard(),
                       stats=stats if stats is not None else GenerationStats(), constraint=constraint)
        with self._cv:
            if self._closed:
                raise EngineClosed("the engine is shutting down")
            if self.max_queue is not None and len(self.waiting) >= self.max_queue:
                raise EngineBusy(f"{len(self.waiting)} requests are waiting (limit {self.max_queue})")
            self.waiting.append(seq)
            self._start_thread()
            self._cv.notify()
        return Handle(self, seq)

    def wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def start(self) -> None:
        """Start the decode thread before the first generation (rank 0 of a group: it sends heartbeats)."""
        with self._cv:
            self._start_thread()

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="gptoss-decode", daemon=True)
            self._thread.start()
            _LIVE.add(self)

    @property
    def waiting_count(self) -> int:
        return len(self.waiting)

    @property
    def active_count(self) -> int:
        return len(self.active)

    def shutdown(self) -> None:
        """Refuse new generations and cancel what waits and runs; returns at once (safe in a signal
        handler: the decode thread ends them at its next step and then ends itself)."""
        with self._cv:
            self._closed = True
            for seq in list(self.waiting) + list(self.active):
                seq.cancelled.set()
            self._cv.notify()

    def close(self, timeout: float = 30.0) -> None:
        """`shutdown`, then wait (up to `timeout`) for the decode thread to end."""
        self.shutdown()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- the decode thread --------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while True:
                with self._cv:
                    idle = False
                    while not self._closed and not self.waiting and not self.active:
                        if not self._cv.wait(self.coord.heartbeat_s):
                            idle = True  # rank 0 of a group: the followers hear from it this often
                            break
                    closing = self._closed and not self.waiting and not self.active
                    self._drop_cancelled_waiting()
                    chosen = self._admit()
                if closing:
                    self.coord.close()
                    return
                if idle and not chosen:
                    self.coord.idle()
                    continue
                for seq, slot in chosen:
                    self.coord.announce(seq.spec)
                    self._start(seq, slot)
                if self.active:
                    with self.coord.deadline("generating with the other ranks"):
                        self._iteration_guarded()
        except BaseException as e:  # noqa: BLE001 - a group cannot go on without rank 0's loop
            self.coord.failed(e, user_error=False)
            raise
        finally:
            # MLX streams belong to the thread that made them: destroy them here, not at interpreter exit
            # (a stream of a finished thread destroyed then aborts the process)
            mx.synchronize()
            mx.clear_streams()

    def follow(self) -> None:
        """A rank other than 0: run exactly what rank 0 runs, generation by generation, until it closes."""
        coord = self.coord
        if not isinstance(coord, Lockstep) or coord.leader:
            raise RuntimeError("only a follower rank follows")
        while True:
            kind, spec = coord.receive()
            if kind == CLOSE:
                return
            if kind != REQUEST:
                continue
            seq = Sequence(spec, coord.sampler(spec), spec.budget(self.context_length), sink=_Discard())
            self._start(seq, self.pool.slots[0])
            while self.active:
                with coord.deadline("generating with the other ranks"):
                    self._iteration_guarded()

    def _iteration_guarded(self) -> None:
        try:
            self._iteration()
        except Exception as e:  # noqa: BLE001 - a bug or a device error: fail what runs, keep serving
            self.coord.failed(e, user_error=False)
            for seq in list(self.active):
                self._finish(seq, error=e)

    def _drop_cancelled_waiting(self) -> None:
        for seq in [s for s in self.waiting if s.cancelled.is_set()]:
            self.waiting.remove(seq)
            self._end(seq, "cancelled", None)

    # admission ----------------------------------------------------------------------------------

    def _admit(self) -> list[tuple[Sequence, Slot]]:
        """Generations that start now (first come, first served), each with its slot (held under the lock)."""
        chosen: list[tuple[Sequence, Slot]] = []
        while self.waiting and len(self.active) + len(chosen) < self.max_sequences:
            seq = self.waiting[0]
            slot = self.pool.choose(seq.spec.prompt, seq.spec.cache_key)
            if slot is None:
                break
            running = [s.worst_case_tokens for s in self.active] + [s.worst_case_tokens for s, _ in chosen]
            if not self.pool.fits(seq.worst_case_tokens, slot, running):
                break
            self.waiting.popleft()
            self.pool.take(slot, seq.spec.cache_key)
            chosen.append((seq, slot))
        return chosen

    def _start(self, seq: Sequence, slot: Slot) -> None:
        self.pool.take(slot, seq.spec.cache_key)
        seq.slot = slot
        self.active.append(seq)
        try:
            reuse = slot.cache.prepare(seq.spec.prompt)
        except Exception as e:  # noqa: BLE001 - this generation's failure
            self._failed(seq, e)
            return
        seq.start(slot, slot.cache.tokens, reuse.to_feed)

    # one iteration --------------------------------------------------------------------------------

    def _iteration(self) -> None:
        for seq in [s for s in self.active if s.cancelled.is_set() and s.phase in DECODING and not s.draining]:
            if self.coord.cancel_decoding(seq):
                self._finish(seq, "cancelled")
            else:
                seq.draining = True
        prefilling = [s for s in self.active if s.phase is Phase.PREFILL]
        if prefilling:
            seq = prefilling[0]
            if self.coord.agree(seq.cancelled.is_set()):
                self._finish(seq, "cancelled")
            else:
                try:
                    self._prefill_step(seq, bounded=any(s.phase in DECODING for s in self.active))
                except Exception as e:  # noqa: BLE001 - this generation's failure
                    self._failed(seq, e)
        decoding = [s for s in self.active if s.phase in DECODING]
        if len(decoding) == 1:
            self._solo_step(decoding[0])
        elif decoding:
            self._batch_step(decoding)

    def _prefill_step(self, seq: Sequence, bounded: bool) -> None:
        body = seq.to_feed[:-1]
        chunk = JOIN_CHUNK if bounded else (seq.spec.prefill_chunk or default_prefill_chunk())
        if seq.fed < len(body):
            part = body[seq.fed : seq.fed + chunk]
            self.model(mx.array([part]), seq.kv)
            mx.eval(seq.kv.state_arrays())
            seq.fed += len(part)
            seq.prompt_cache.sync(seq.held + body[: seq.fed])
        if seq.fed >= len(body):
            seq.prompt_cache.checkpoint()  # where this prompt ends: the next turn diverges right after it
            seq.phase = Phase.READY

    def _solo_step(self, seq: Sequence) -> None:
        """One token of a lone sequence from the single-sequence loop (pipelined, speculative)."""
        try:
            if seq.phase is not Phase.SOLO:  # from a finished prefill, or back from the batch
                first = self.batch.remove(seq) if seq.phase is Phase.BATCH else seq.to_feed[-1]
                seq.solo = SoloRun(self.model, seq, first)
                seq.phase = Phase.SOLO
            drawn = seq.solo.next()
        except Exception as e:  # noqa: BLE001 - this generation's failure
            self._failed(seq, e)
            return
        if drawn is None or self._take(seq, *drawn):
            self._finish(seq)

    def _batch_step(self, decoding: list[Sequence]) -> None:
        for seq in decoding:
            if seq.phase is Phase.SOLO:
                nxt = seq.solo.rewind(lambda tok, lp, s=seq: self._take(s, tok, lp))
                seq.solo = None
                if nxt is None or seq.finish_reason() is not None:
                    self._finish(seq)
                    continue
            elif seq.phase is Phase.READY:
                nxt = seq.to_feed[-1]
            else:
                continue
            self.batch.add(seq, nxt)
            seq.phase = Phase.BATCH
        for seq, tok, lp in self.batch.step().tokens:
            if self._take(seq, tok, lp):
                self._finish(seq)

    # tokens, the end ------------------------------------------------------------------------------

    def _take(self, seq: Sequence, tok: int, logprob: Optional[TokenLogprob] = None) -> bool:
        """A token the sequence drew: recorded and handed out (drained instead, after a lockstep stop).
        True when the one finish rule says it was the last (the caller ends the sequence)."""
        if seq.draining:
            seq.drained.append(tok)
        else:
            seq.record(tok, logprob)
            seq.sink.token(tok, logprob)
        return seq.finish_reason() is not None

    def _failed(self, seq: Sequence, e: BaseException) -> None:
        self.coord.failed(e, user_error=isinstance(e, RuntimeUserError))
        self._finish(seq, error=e)

    def _finish(self, seq: Sequence, reason: Optional[str] = None, error: Optional[BaseException] = None) -> None:
        if seq.phase is Phase.DONE or seq not in self.active:
            return
        self.active.remove(seq)
        if seq in self.batch:
            self.batch.remove(seq)
        undelivered = seq.solo.close() if seq.solo is not None else []
        seq.solo = None
        if seq.slot is not None:
            # whatever happened (stop, length, cancel, error), the cache and its token list agree
            fed = seq.tokens + undelivered if seq.phase is not Phase.PREFILL else seq.held + seq.to_feed[: seq.fed]
            seq.prompt_cache.sync(fed)
            mx.eval(seq.kv.state_arrays())  # MLX streams are per thread: leave nothing lazy behind
            self.pool.release(seq.slot)
        if error is not None:
            reason = "error"
        elif seq.cancelled.is_set() or seq.draining:
            reason = "cancelled"
        self._end(seq, reason or seq.finish_reason() or "cancelled", error)

    def _end(self, seq: Sequence, reason: str, error: Optional[BaseException]) -> None:
        seq.phase = Phase.DONE
        st = seq.stats
        st.finish_reason = reason
        if reason == "stop":
            st.stop_token = seq.generated[-1]
        try:
            seq.sink.end(st, error)
        finally:
            seq.released.set()
            with self._cv:
                self._cv.notify()


DECODING = (Phase.READY, Phase.SOLO, Phase.BATCH)
_LIVE: "weakref.WeakSet[ServingCore]" = weakref.WeakSet()


@atexit.register
def _close_live_cores() -> None:
    """End every decode thread before the interpreter goes (see `_serve`)."""
    for core in list(_LIVE):
        core.close()
