"""The engine: one model, one prompt cache, harmony in and parser events out.

Shared by `gptoss generate`, `gptoss chat` (ChatSession) and `gptoss serve`: prompt tokens are
fed with prompt reuse, generation stops on harmony's stop ids, and every generated token goes
through the stream parser. A turn reports how many prompt tokens it reused and prefilled.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from gptoss_metal.harmony_io import STOP_IDS, Event, StreamParser
from gptoss_metal.harmony_io.parser import Done
from gptoss_metal.metal_runtime import GenerationStats, Model, generate, load, prefill
from gptoss_metal.metal_runtime.prompt_cache import PromptCache


@dataclass
class TurnStats(GenerationStats):
    """One generation as the engine ran it: the loop's numbers plus prompt reuse."""

    reused_tokens: int = 0  # prompt tokens that were already in the cache

    def summary(self) -> str:
        return (f"prefill {self.prefilled_tokens} tok ({self.prefill_tps:.1f} tok/s), "
                f"reused {self.reused_tokens} tok, decode {self.generated_tokens} tok ({self.decode_tps:.1f} tok/s)")


class Engine:
    """A loaded model plus the prompt caches of the conversations it is serving.

    With one cache slot (the default) every generation shares one prompt cache, which suits one
    conversation at a time. With more, a generation that names a `cache_key` (the chat page names
    its conversation) gets a cache of its own, so switching between conversations and back still
    reuses the earlier one's tokens; the least recently used slot is reset when they run out.
    Generations without a key share the slot of key None.
    """

    def __init__(self, model: Model, model_id: str = "gpt-oss", max_snapshots: int = 4, cache_slots: int = 1):
        if cache_slots < 1:
            raise ValueError("cache_slots must be >= 1")
        self.model = model
        self.model_id = model_id
        self.max_snapshots = max_snapshots
        self.cache_slots = cache_slots
        self.prompt_cache = PromptCache(model, max_snapshots=max_snapshots)  # the slot used last
        self._slots: OrderedDict[Optional[str], PromptCache] = OrderedDict([(None, self.prompt_cache)])

    def cache_for(self, key: Optional[str]) -> PromptCache:
        """The prompt cache of `key` (one shared cache when there is a single slot)."""
        if self.cache_slots == 1:
            return self.prompt_cache
        pc = self._slots.get(key)
        if pc is None:
            if len(self._slots) >= self.cache_slots:
                _, pc = self._slots.popitem(last=False)
                pc.reset()  # frees its KV memory before the new conversation fills it
            else:
                pc = PromptCache(self.model, max_snapshots=self.max_snapshots)
            self._slots[key] = pc
        self._slots.move_to_end(key)
        self.prompt_cache = pc
        return pc

    @classmethod
    def load(cls, path: str | Path, dtype: str = "bfloat16", model_id: Optional[str] = None,
             cache_slots: int = 1) -> "Engine":
        return cls(load(path, dtype=dtype), model_id or Path(path).name, cache_slots=cache_slots)

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
        cache_key: Optional[str] = None,
    ) -> Iterator[Event]:
        """Parser events of one generation from `prompt` (which ends with `<|start|>assistant`).

        `forced_prefix` is fed as if the model had written it (e.g. the header of a tool call that
        `tool_choice` demands); its events come first. `should_stop` is polled after every token
        (not every event: some tokens produce none), so a cancelled request stops within a token.
        `cache_key` picks the prompt cache (see the class docstring).
        """
        stats = stats if stats is not None else TurnStats()
        pc = self.cache_for(cache_key)
        prompt = list(prompt) + list(forced_prefix)
        reuse = pc.prepare(prompt)
        stats.prompt_tokens = len(prompt) - len(forced_prefix)
        stats.reused_tokens = reuse.reused
        stats.prefilled_tokens = len(reuse.to_feed)
        held = list(pc.tokens)
        parser = StreamParser(tools)
        forced_events = [e for t in forced_prefix for e in parser.feed(t)]
        gen = GenerationStats()
        t0 = t1 = time.perf_counter()
        try:
            prefill(self.model, reuse.to_feed[:-1], pc.cache)
            pc.sync(held + reuse.to_feed[:-1])
            pc.checkpoint()  # where this prompt ends: the next turn diverges right after it
            t1 = time.perf_counter()
            yield from forced_events
            ended = False
            for tok in generate(self.model, reuse.to_feed[-1:], max_tokens=max_tokens, temperature=temperature,
                                top_p=top_p, seed=seed, stop_ids=tuple(STOP_IDS) + tuple(extra_stop_ids),
                                cache=pc.cache, stats=gen):
                if should_stop is not None and should_stop():
                    return
                events = parser.feed(tok)
                ended = any(isinstance(e, Done) for e in events)
                yield from events
            if not ended:
                yield from parser.finish("length" if gen.finish_reason == "length" else "stop")
        finally:
            # whatever happened (stop, length, Ctrl-C, client gone), the cache and its token list agree
            pc.sync(held + reuse.to_feed + gen.generated)
            # prefill = the chunks fed above + the last prompt token's forward (time to first token)
            stats.prefill_seconds = (t1 - t0) + gen.first_token_seconds
            stats.decode_seconds = gen.decode_seconds
            stats.generated_tokens = len(gen.generated)
            stats.generated = gen.generated
            stats.finish_reason, stats.stop_token = gen.finish_reason, gen.stop_token
            stats.first_token_seconds = stats.prefill_seconds
