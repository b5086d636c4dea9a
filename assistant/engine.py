"""The engine: one model, its prompt caches, harmony in and parser events out, generations decoded together.

Shared by `gptoss generate`, `gptoss chat` (ChatSession), the chat page and the API server. The serving
core (metal_runtime/serving.py) runs every generation on one decode thread; the engine adds what the
runtime must not know: the harmony parser that turns each generation's tokens into events, on the
decode thread, pushed to the caller as they come.

Two ways to read a generation, neither of them polling:
- `submit(..., push=...)`: events are pushed (from the decode thread: `push` must not block; an asyncio
  caller passes `loop.call_soon_threadsafe`-based pushes), ending with one `Finished`; the returned
  handle's `cancel()` stops it at the decode thread's next step;
- `stream(...)`: a generator of events for a thread that waits on a queue; a `StopSignal` (or closing
  the generator, Ctrl-C) stops it, and when the generator is done the cache it used is consistent.

A model spread over several ranks (`mlx.launch`, metal_runtime.distributed) runs one engine per rank:
rank 0's serves the caller and announces what it runs; the others `follow()` it (metal_runtime.lockstep).
"""

from __future__ import annotations

import queue
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from gptoss_metal.harmony_io import STOP_IDS, Done, Event, StreamParser
from gptoss_metal.metal_runtime import GenerationStats, Model, load
from gptoss_metal.metal_runtime.distributed import DistributedGroup, barrier, load_expert_parallel
from gptoss_metal.metal_runtime.lockstep import Lockstep
from gptoss_metal.metal_runtime.rank_watchdog import RankWatchdog
from gptoss_metal.metal_runtime.prompt_cache import PromptCache
from gptoss_metal.harmony_io.tokens import FIRST_SPECIAL
from gptoss_metal.metal_runtime.sampling import TokenLogprob
from gptoss_metal.metal_runtime.sequence import SequenceSpec, TokenConstraint, context_room
from gptoss_metal.metal_runtime.serving import Handle, ServingCore

from .stop import StopSignal

LOAD_WAIT_S = 1800.0  # ranks load at their disks' speed: the first to finish waits for the last


@dataclass
class Finished:
    """The last item pushed for a generation: its figures, and the error that ended it (if any)."""

    stats: GenerationStats
    error: Optional[BaseException] = None


@dataclass
class Logprobs:
    """Pushed just before the event whose tokens these are (when the generation asked for logprobs)."""

    entries: list[TokenLogprob]


class _EventSink:
    """Turns one generation's tokens into harmony events and pushes them (runs on the decode thread)."""

    def __init__(self, tools: Optional[list[str]], push: Callable[[object], None]):
        self.parser = StreamParser(tools)
        self.push = push
        self.ended = False  # the parser emitted Done
        self.pending: deque[TokenLogprob] = deque()  # text tokens' logprobs not yet in an event

    def token(self, token: int, logprob: Optional[TokenLogprob]) -> None:
        if logprob is not None and token < FIRST_SPECIAL:
            self.pending.append(logprob)
        self._push(self.parser.feed(token))

    def end(self, stats: GenerationStats, error: Optional[BaseException]) -> None:
        if error is None and not self.ended and stats.finish_reason in ("stop", "length"):
            self._push(self.parser.finish(stats.finish_reason))
        self.push(Finished(stats, error))

    def _push(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, Done):
                self.ended = True
            if self.pending and getattr(ev, "tokens", ()):  # every text token is in exactly one event
                self.push(Logprobs([self.pending.popleft() for _ in ev.tokens if self.pending]))
            self.push(ev)


class Engine:
    """A loaded model, the prompt caches of the conversations it serves, and its decode thread.

    `max_sequences`: generations decoded together (each holds one prompt cache while it runs);
    `cache_slots`: prompt caches kept (at least `max_sequences`; more keep idle conversations warm);
    `kv_budget_bytes`: KV memory all prompt caches may hold together (None: no limit) -- a generation
    waits until its worst case fits, idle caches are dropped oldest first to make room;
    `max_queue`: generations that may wait for a turn (None: no limit); more are refused (EngineBusy).

    A generation goes to the cache its prompt continues; one that names a `cache_key` (the chat page
    names its conversation) goes back to the cache that key used last, if that cache is free, so
    switching between conversations and back still reuses the earlier one's tokens.

    `lockstep`: this engine is one rank of a group (one sequence at a time); on rank 0 it is used
    like any engine, on the other ranks `follow()` is all there is to call.
    """

    def __init__(self, model: Model, model_id: str = "gpt-oss", max_snapshots: int = 4, speculate: bool = True,
                 max_sequences: int = 1, cache_slots: Optional[int] = None, kv_budget_bytes: Optional[int] = None,
                 lockstep: Optional[Lockstep] = None, max_queue: Optional[int] = None):
        if cache_slots is not None and cache_slots < 1:
            raise ValueError("cache_slots must be >= 1")
        self.model = model
        self.model_id = model_id
        self.speculate = speculate  # prompt-lookup speculative decoding where it pays (per request overridable)
        self.lockstep = lockstep
        self.core = ServingCore(model, slots=cache_slots or max_sequences, max_sequences=max_sequences,
                                kv_budget_bytes=kv_budget_bytes, max_snapshots=max_snapshots, max_queue=max_queue,
                                coordination=lockstep)
        self.max_sequences = self.core.max_sequences
        if lockstep is not None and lockstep.leader:
            self.core.start()  # the other ranks hear from rank 0 from now on (requests or heartbeats)

    @classmethod
    def load(cls, path: str | Path, dtype: str = "bfloat16", model_id: Optional[str] = None, speculate: bool = True,
             max_sequences: int = 1, cache_slots: Optional[int] = None, kv_budget_bytes: Optional[int] = None,
             group: Optional[DistributedGroup] = None, guard: Optional[RankWatchdog] = None,
             max_queue: Optional[int] = None, max_memory: Optional[int] = None) -> "Engine":
        """Load a model folder. With `group`, this rank's share of it (its experts, the dense weights),
        once every rank has loaded its share; the engine then decodes one sequence at a time.

        `max_memory`: bytes the model may hold (None: what the machine allows less the KV budget); a model
        that does not fit runs with its experts cached (metal_runtime/memory.py), with the same tokens."""
        if group is None:
            model = load(path, dtype=dtype, max_memory=max_memory, kv_reserve=kv_budget_bytes)
        else:
            model = load_expert_parallel(path, group, dtype=dtype, max_memory=max_memory)
            with guard.deadline("waiting for the other ranks to load", LOAD_WAIT_S) if guard else nullcontext():
                barrier(group)
        return cls(model, model_id or Path(path).name, speculate=speculate, max_sequences=max_sequences,
                   cache_slots=cache_slots, kv_budget_bytes=kv_budget_bytes, max_queue=max_queue,
                   lockstep=Lockstep(group, guard) if group is not None else None)

    def follow(self) -> None:
        """A rank other than 0: run what rank 0's engine runs until it closes (every rank's caches stay alike)."""
        self.core.follow()

    # -- the context ----------------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return self.core.context_length

    def room(self, prompt: Sequence[int]) -> int:
        """Tokens that can still be generated after `prompt` (< 1: it does not fit)."""
        return context_room(self.context_length, len(prompt))

    # -- state --------------------------------------------------------------------------------------

    @property
    def slots(self) -> list[PromptCache]:
        return [s.cache for s in self.core.pool.slots]

    @property
    def prompt_cache(self) -> PromptCache:
        """The prompt cache the last generation used (with one sequence: the only one)."""
        last = self.core.pool.last
        return last.cache if last is not None else self.core.pool.slots[0].cache

    @property
    def active(self) -> int:
        """Generations being decoded now."""
        return self.core.active_count

    @property
    def waiting(self) -> int:
        """Generations waiting for their turn."""
        return self.core.waiting_count

    # -- generations ----------------------------------------------------------------------------

    def submit(
        self,
        prompt: Sequence[int],
        *,
        push: Callable[[object], None],
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: Optional[int] = None,
        tools: Optional[Iterable[str]] = None,
        stats: Optional[GenerationStats] = None,
        extra_stop_ids: Iterable[int] = (),
        speculate: Optional[bool] = None,
        cache_key: Optional[str] = None,
        logprobs: Optional[int] = None,
        constraint: Optional[TokenConstraint] = None,
    ) -> Handle:
        """Queue one generation from `prompt` (which ends with `<|start|>assistant`): its parser events are
        `push`ed as they come, then one `Finished`.

        `logprobs`: each text token's logprob and that many
        alternatives, pushed as `Logprobs` just before the event holding the tokens. `constraint`: what may
        be drawn (structured outputs: harmony_io.constraint). Raises (before queueing) a RuntimeUserError
        for a generation that cannot run, EngineBusy when too many wait, EngineClosed when shutting down.
        """
        spec = SequenceSpec(
            prompt=tuple(prompt), max_tokens=max_tokens, temperature=temperature,
            top_p=top_p, seed=seed, stop_ids=tuple(STOP_IDS) + tuple(extra_stop_ids),
            speculate=self.speculate if speculate is None else speculate, cache_key=cache_key, logprobs=logprobs)
        sink = _EventSink(None if tools is None else list(tools), push)
        return self.core.submit(spec, sink, stats, constraint)

    def stream(self, prompt: Sequence[int], *, stop: Optional[StopSignal] = None, **options) -> Iterator[Event]:
        """Parser events of one generation (options as `submit`), for a thread that waits for them.

        Submits at once (refusals are raised here, not at the first event). `stop` ends it at the decode
        thread's next step; so does closing the generator (a client gone, Ctrl-C). When the generator is
        done, the cache the generation used is consistent.
        """
        items: "queue.SimpleQueue[object]" = queue.SimpleQueue()
        handle = self.submit(prompt, push=items.put, **options)
        return _events(items, handle, stop)

    def close(self) -> None:
        """Stop the decode thread (generations in flight end as cancelled)."""
        self.core.close()


def _events(items: "queue.SimpleQueue[object]", handle: Handle, stop: Optional[StopSignal]) -> Iterator[Event]:
    unlink = stop.on_set(handle.cancel) if stop is not None else None
    try:
        while True:
            item = items.get()
            if isinstance(item, Finished):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        if unlink is not None:
            unlink()
        handle.cancel()
        handle.wait()  # the decode thread is done with this generation's cache
