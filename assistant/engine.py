"""The engine: one model, prompt caches, harmony in and parser events out, requests decoded together.

Shared by `gptoss generate`, `gptoss chat` (ChatSession) and `gptoss serve`. `Engine.stream` is a
generator of parser events for one generation; any number of threads may call it at once. One decode
thread (decode_loop.py) owns the model and the caches: it prefills each request's new prompt tokens
with prompt reuse, runs a lone request through the pipelined, speculative single-sequence loop, and
requests that overlap in one batched forward pass per token (up to `max_sequences` at a time).

A model spread over several ranks (`mlx.launch`, metal_runtime.distributed) runs one engine per
rank: rank 0's serves the caller and broadcasts what it runs; the others `follow()` it (lockstep.py).
"""

from __future__ import annotations

import queue
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from gptoss_metal.harmony_io import STOP_IDS, Event
from gptoss_metal.metal_runtime import GenerationStats, Model, load
from gptoss_metal.metal_runtime.distributed import DistributedGroup, barrier, load_expert_parallel
from gptoss_metal.metal_runtime.guard import Guard
from gptoss_metal.metal_runtime.prompt_cache import PromptCache

from .decode_loop import END, DecodeLoop, Request
from .lockstep import Lockstep

LOAD_WAIT_S = 1800.0  # ranks load at their disks' speed: the first to finish waits for the last


@dataclass
class TurnStats(GenerationStats):
    """One generation as the engine ran it: the loop's numbers plus prompt reuse."""

    reused_tokens: int = 0  # prompt tokens that were already in the cache
    queued_seconds: float = 0.0  # waiting for a free sequence slot

    def summary(self) -> str:
        text = (f"prefill {self.prefilled_tokens} tok ({self.prefill_tps:.1f} tok/s), "
                f"reused {self.reused_tokens} tok, decode {self.generated_tokens} tok ({self.decode_tps:.1f} tok/s)")
        if self.verifications:
            text += (f", speculation: {self.accepted_tokens} of {self.drafted_tokens} drafted tokens accepted "
                     f"in {self.verifications} passes")
        return text


class Engine:
    """A loaded model, the prompt caches of the conversations it serves, and its decode thread.

    `max_sequences`: generations decoded together (each holds one prompt cache while it runs);
    `cache_slots`: prompt caches kept (at least `max_sequences`; more keep idle conversations warm);
    `kv_budget_bytes`: KV memory all prompt caches may hold together (None: no limit) -- a request
    waits until its worst case fits, idle caches are dropped oldest first to make room.

    A generation goes to the cache its prompt continues; one that names a `cache_key` (the chat page
    names its conversation) goes back to the cache that key used last, if that cache is free, so
    switching between conversations and back still reuses the earlier one's tokens.

    `lockstep`: this engine is one rank of a group (one sequence at a time); on rank 0 it is used
    like any engine, on the other ranks `follow()` is all there is to call.
    """

    def __init__(self, model: Model, model_id: str = "gpt-oss", max_snapshots: int = 4, speculate: bool = True,
                 max_sequences: int = 1, cache_slots: Optional[int] = None, kv_budget_bytes: Optional[int] = None,
                 lockstep: Optional[Lockstep] = None):
        if max_sequences < 1:
            raise ValueError("max_sequences must be >= 1")
        if cache_slots is not None and cache_slots < 1:
            raise ValueError("cache_slots must be >= 1")
        self.model = model
        self.model_id = model_id
        self.speculate = speculate  # prompt-lookup speculative decoding where it pays (per request overridable)
        if lockstep is not None:
            max_sequences, cache_slots = 1, 1  # ranks in lockstep decode one sequence at a time, one cache
        n_slots = max(max_sequences, cache_slots or max_sequences)
        self.max_sequences = max_sequences
        self.slots = [PromptCache(model, max_snapshots=max_snapshots) for _ in range(n_slots)]
        self.lockstep = lockstep
        self._loop = DecodeLoop(model, self.slots, max_sequences=max_sequences, kv_budget_bytes=kv_budget_bytes,
                                lockstep=lockstep)
        if lockstep is not None and lockstep.leader:
            self._loop.start()  # the other ranks hear from rank 0 from now on (requests or heartbeats)

    @classmethod
    def load(cls, path: str | Path, dtype: str = "bfloat16", model_id: Optional[str] = None, speculate: bool = True,
             max_sequences: int = 1, cache_slots: Optional[int] = None, kv_budget_bytes: Optional[int] = None,
             group: Optional[DistributedGroup] = None, guard: Optional[Guard] = None,
             max_memory: Optional[int] = None) -> "Engine":
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
                   cache_slots=cache_slots, kv_budget_bytes=kv_budget_bytes,
                   lockstep=Lockstep(group, guard) if group is not None else None)

    def follow(self) -> None:
        """A rank other than 0: run what rank 0's engine runs until it closes (every rank's caches stay alike)."""
        if self.lockstep is None or self.lockstep.leader:
            raise RuntimeError("only a follower rank follows")
        self._loop.follow(TurnStats)

    @property
    def prompt_cache(self) -> PromptCache:
        """The prompt cache the last generation used (with one sequence: the only one)."""
        return self._loop.last_slot or self.slots[0]

    @property
    def active(self) -> int:
        """Generations being decoded now."""
        return self._loop.active_count

    def stream(
        self,
        prompt: Sequence[int],
        *,
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: Optional[int] = None,
        tools: Optional[Iterable[str]] = None,
        stats: Optional[TurnStats] = None,
        extra_stop_ids: Iterable[int] = (),
        forced_prefix: Sequence[int] = (),
        should_stop: Optional[Callable[[], bool]] = None,
        speculate: Optional[bool] = None,
        cache_key: Optional[str] = None,
    ) -> Iterator[Event]:
        """Parser events of one generation from `prompt` (which ends with `<|start|>assistant`).

        `forced_prefix` is fed as if the model had written it (e.g. the header of a tool call that
        `tool_choice` demands); its events come first. `should_stop` is polled after every token, so a
        cancelled request stops within a token. Closing the generator (a client gone, Ctrl-C) stops
        the generation too; either way, when this generator is done the cache it used is consistent.
        `cache_key` names the conversation, to find its prompt cache again (see the class docstring).
        """
        req = Request(
            prompt=list(prompt), forced_prefix=list(forced_prefix), max_tokens=max_tokens, temperature=temperature,
            top_p=top_p, seed=seed, tools=None if tools is None else list(tools),
            stop_ids=tuple(STOP_IDS) + tuple(extra_stop_ids), stats=stats if stats is not None else TurnStats(),
            speculate=self.speculate if speculate is None else speculate, should_stop=should_stop,
            cache_key=cache_key,
        )
        self._loop.submit(req)
        try:
            while True:
                try:
                    item = req.events.get(timeout=0.1)
                except queue.Empty:
                    if should_stop is not None and should_stop():
                        req.cancel()
                    continue
                if item is END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
                if should_stop is not None and should_stop():
                    break  # the caller stopped: nothing more is delivered (the decode thread stops too)
        finally:
            req.cancel()
            req.released.wait()  # the decode thread is done with this request's cache

    def close(self) -> None:
        """Stop the decode thread (generations in flight end as cancelled)."""
        self._loop.close()
