"""Experts in a bounded resident cache, filled from the converted files by byte range.

A model larger than the memory it may use keeps its dense weights resident and its experts here:
only k of E experts per layer are used per token, and the converted files let one expert's rows be
read alone (experts are axis 0 of every expert tensor; the same reader expert-parallel loading uses).

Memory is allocated once, up front, and never grows:
- per layer, a pool of `slots` experts (weights and scales of gate, up and down as MLX arrays; the
  biases of every expert stay resident, they are small). Misses are read with `pread` straight into
  a slot's memory (numpy views of the MLX arrays: no intermediate copy, nothing for MLX's allocator
  to keep), after the computations still reading that memory have been evaluated;
- one segment buffer of `segment` experts shared by all layers, for calls that route to more experts
  than a pool holds (prefill): their experts pass through it in parts of ascending ids, each part
  evaluated before the next is read.

How a call sees the cache is `OffloadedExperts.map_segments` (the protocol of experts.py): a decode
step (at most `POOL_TOKENS` tokens whose experts fit the slots) gets the layer's pool with its tokens'
expert ids mapped to slots, in one part; anything else gets ascending parts. Every expert path
computes per part and combines parts exactly as it combines one, so tokens are those of the model
held whole (tests/test_expert_cache.py checks every path, greedy and seeded).

Which experts stay is a `Policy` (LRU, LFU, or LRU with the most used experts pinned), per layer.
While a layer computes, the next layer's likely experts (its router applied to this layer's MoE input)
can be read ahead on an I/O thread (`prefetch`). Counters (`CacheStats`) say what it cost.
"""

from __future__ import annotations

import os
import sys
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from gptoss_metal.architecture import StoredTensor, read_into

from .errors import ModelLoadError, reported
from .experts import Pairs, SegmentFn, SwitchMXFP4GLU

POOL_TOKENS = 8  # calls of up to this many tokens (decode) use the layer's pool when their experts fit
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
STORED = tuple(f"{p}.{part}" for p in PROJECTIONS for part in ("weight", "scales"))  # what the cache holds
MAX_PENDING = 8  # lazily built computations reading a pool, kept to be evaluated before it is written


# -- policies -------------------------------------------------------------------------------------


class Policy(Protocol):
    """Which resident experts of a layer make room for new ones."""

    name: str

    def used(self, layer: int, experts: np.ndarray) -> None:
        """`experts` (unique ids) were routed to now, resident or not."""

    def victims(self, layer: int, resident: list[int], count: int, keep: set[int]) -> list[int]:
        """`count` of the `resident` experts to evict, none of `keep` (the ones this step needs)."""


class LRU:
    """Least recently used goes first."""

    name = "lru"

    def __init__(self, layers: int):
        self.clock = 0
        self.last = [dict[int, int]() for _ in range(layers)]

    def used(self, layer: int, experts: np.ndarray) -> None:
        self.clock += 1
        last = self.last[layer]
        for e in experts.tolist():
            last[e] = self.clock

    def victims(self, layer: int, resident: list[int], count: int, keep: set[int]) -> list[int]:
        last = self.last[layer]
        return sorted((e for e in resident if e not in keep), key=lambda e: last.get(e, 0))[:count]


class LFU(LRU):
    """Least often used since loading goes first (ties: least recently used); prefill counts too."""

    name = "lfu"

    def __init__(self, layers: int):
        super().__init__(layers)
        self.count = [dict[int, int]() for _ in range(layers)]

    def used(self, layer: int, experts: np.ndarray) -> None:
        super().used(layer, experts)
        count = self.count[layer]
        for e in experts.tolist():
            count[e] = count.get(e, 0) + 1

    def victims(self, layer: int, resident: list[int], count: int, keep: set[int]) -> list[int]:
        uses, last = self.count[layer], self.last[layer]
        return sorted((e for e in resident if e not in keep), key=lambda e: (uses.get(e, 0), last.get(e, 0)))[:count]


class Pinned(LFU):
    """LRU, except that a share of the slots holds the layer's most used experts so far, never evicted."""

    name = "pinned"

    def __init__(self, layers: int, pinned: int):
        super().__init__(layers)
        self.pinned = pinned

    def victims(self, layer: int, resident: list[int], count: int, keep: set[int]) -> list[int]:
        uses = self.count[layer]
        hot = set(sorted(uses, key=lambda e: -uses[e])[: self.pinned])
        order = LRU.victims(self, layer, resident, len(resident), keep)  # least recent first
        return ([e for e in order if e not in hot] + [e for e in order if e in hot])[:count]


POLICIES = ("lru", "lfu", "pinned")


def make_policy(name: str, layers: int, slots: int) -> Policy:
    if name == "lru":
        return LRU(layers)
    if name == "lfu":
        return LFU(layers)
    if name == "pinned":
        return Pinned(layers, slots // 2)
    raise ValueError(f"cache policy must be one of {', '.join(POLICIES)}, got {name!r}")


# -- what it cost ----------------------------------------------------------------------------------


@dataclass
class CacheStats:
    """Counters since the last `reset`: decode steps (pool calls) and everything read from disk."""

    decode_calls: int = 0  # layer calls served from a pool
    hits: int = 0  # experts a pool call needed that were resident
    misses: int = 0  # ... that had to be read (prefetched ones count as hits)
    prefetched: int = 0  # experts read ahead
    prefetch_used: int = 0  # of those, needed by the step they were read for
    segment_calls: int = 0  # layer calls served in parts (prefill)
    segment_parts: int = 0
    decode_bytes: int = 0  # bytes read from disk for pool calls (misses and read-ahead)
    segment_bytes: int = 0  # bytes read from disk for segment calls
    embedding_bytes: int = 0  # embedding rows read on demand

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0

    @property
    def disk_bytes(self) -> int:
        return self.decode_bytes + self.segment_bytes + self.embedding_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "hit_rate": self.hit_rate, "disk_bytes": self.disk_bytes}


# -- the cache -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheSettings:
    """How many experts stay resident and how they are chosen and read."""

    slots: int  # per layer
    segment: int  # experts of the shared buffer for calls in parts
    policy: str = "lfu"  # measured best of the three on recorded routing (BENCHMARKS.md, "Bigger than memory")
    prefetch: bool = False  # read-ahead: off by default, it read ~1.5x the bytes for the misses it saved there
    keep_page_cache: bool = False  # False: the OS drops the file pages we read (our cache is the cache)


class _Rows:
    """`count` experts' weights and scales for one layer shape: MLX arrays and writable numpy views of them."""

    def __init__(self, count: int, shapes: dict[str, tuple[tuple[int, ...], mx.Dtype]]):
        self.count = count
        self.arrays = {name: mx.zeros((count, *shape), dtype=dtype) for name, (shape, dtype) in shapes.items()}
        mx.eval(*self.arrays.values())
        self.views = {name: np.asarray(a) for name, a in self.arrays.items()}  # the same memory, writable
        for name, v in self.views.items():
            if not (v.flags.c_contiguous and v.flags.writeable):
                raise RuntimeError(f"internal error: the cache's {name} rows are not a writable contiguous view")

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def layer(self, template: SwitchMXFP4GLU, bias: dict[str, mx.array]) -> SwitchMXFP4GLU:
        """A weights container over these rows (and the given biases, one row per held expert)."""
        hidden, intermediate = template.down_proj.weight.shape[1], template.gate_proj.weight.shape[1]
        m = SwitchMXFP4GLU(self.count, hidden, intermediate, template.limit, template.alpha)  # zeros never evaluated
        for p in PROJECTIONS:
            proj = getattr(m, p)
            proj.weight, proj.scales, proj.bias = self.arrays[f"{p}.weight"], self.arrays[f"{p}.scales"], bias[p]
        return m


@dataclass
class _Pool:
    """One layer's slots and which expert each holds."""

    rows: _Rows
    expert_of: np.ndarray  # slot -> expert id (-1: empty)
    slot_of: np.ndarray  # expert id -> slot (-1: not resident)
    incoming: dict[int, Future] = field(default_factory=dict)  # expert -> its read ahead, in flight
    ahead: set[int] = field(default_factory=set)  # experts read ahead and not yet needed
    view: Optional[SwitchMXFP4GLU] = None  # rebuilt when the slots change
    pending: list[mx.array] = field(default_factory=list)  # computations reading the slots


class ExpertCache:
    """The experts of every layer of one model: pools, the segment buffer, the policy, the reads."""

    def __init__(self, stored: list[dict[str, StoredTensor]], biases: list[dict[str, mx.array]],
                 template: SwitchMXFP4GLU, routers: list[nn.Module], settings: CacheSettings, k: int):
        self.stored, self.biases, self.template, self.routers = stored, biases, template, routers
        self.settings, self.k = settings, k
        self.num_experts = template.num_experts
        if not k <= settings.slots < self.num_experts or not 1 <= settings.segment <= self.num_experts:
            raise ModelLoadError(f"expert cache of {settings.slots} slots per layer and a segment of {settings.segment}: "
                                 f"needs {k} <= slots < {self.num_experts} and 1 <= segment <= {self.num_experts}")
        for t in stored[0].values():
            if t.spec.dtype not in _MX_DTYPES:
                raise ModelLoadError(f"{t.path}: tensor {t.name} is {t.spec.dtype}; MXFP4 experts are U32 words and "
                                     "U8 scales")
        shapes = {name: (t.spec.shape[1:], _MX_DTYPES[t.spec.dtype]) for name, t in stored[0].items()}
        self.pools = [_Pool(_Rows(settings.slots, shapes), np.full(settings.slots, -1), np.full(self.num_experts, -1))
                      for _ in stored]
        self.segment = _Rows(settings.segment, shapes)
        self.policy = make_policy(settings.policy, len(stored), settings.slots)
        self.stats = CacheStats()
        self.expert_bytes = sum(t.spec.row_bytes for t in stored[0].values())
        self._fds: dict[str, int] = {}  # one descriptor per shard, opened here (the I/O thread only reads)
        for t in {str(t.path): t for layer in stored for t in layer.values()}.values():
            self._fds[str(t.path)] = self._open(t)
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptoss-expert-io") \
            if settings.prefetch else None
        self.close = weakref.finalize(self, _release, self._fds, self._io)  # also when the model goes
        self._expected: dict[int, mx.array] = {}  # layer -> predicted expert ids (lazy)

    # -- sizes ------------------------------------------------------------------------------------

    @property
    def resident_bytes(self) -> int:
        """What the cache holds: pools, segment buffer, every expert's biases."""
        biases = sum(b.nbytes for layer in self.biases for b in layer.values())
        return sum(p.rows.nbytes for p in self.pools) + self.segment.nbytes + biases

    # -- reading --------------------------------------------------------------------------------------

    def _open(self, t: StoredTensor) -> int:
        try:
            fd = os.open(t.path, os.O_RDONLY)
        except OSError as e:
            raise ModelLoadError(f"{t.path}: cannot open ({e.strerror})") from None
        if sys.platform == "darwin" and not self.settings.keep_page_cache:
            import fcntl

            fcntl.fcntl(fd, fcntl.F_NOCACHE, 1)  # macOS: reads bypass the unified buffer cache
        return fd

    def _read(self, layer: int, expert: int, views: dict[str, np.ndarray], row: int) -> int:
        """Expert `expert` of `layer` from disk into row `row` of `views`; the bytes read (any thread)."""
        total = 0
        for name, t in self.stored[layer].items():
            fd = self._fds[str(t.path)]
            with reported():
                read_into(t, expert * t.spec.row_bytes, views[name][row], fd=fd)
            if not self.settings.keep_page_cache and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, t.rows_offset(expert), t.spec.row_bytes, os.POSIX_FADV_DONTNEED)
            total += t.spec.row_bytes
        return total

    # -- the pool of a layer ------------------------------------------------------------------------

    def _writable(self, pool: _Pool) -> None:
        """Before a pool's memory is written: the computations reading it are evaluated."""
        if pool.pending:
            mx.eval(*pool.pending)
            pool.pending.clear()

    def _settle(self, layer: int) -> None:
        """Reads ahead into this layer, finished (their slots hold their experts from now on)."""
        pool = self.pools[layer]
        for future in pool.incoming.values():
            self.stats.decode_bytes += future.result()
        pool.incoming.clear()

    def _make_room(self, layer: int, count: int, keep: set[int]) -> list[int]:
        """`count` free slots of a layer (evicting by the policy), marked empty."""
        pool = self.pools[layer]
        free = [int(s) for s in np.flatnonzero(pool.expert_of < 0)][:count]
        if len(free) < count:
            resident = [int(e) for e in pool.expert_of if e >= 0 and int(e) not in pool.incoming]
            for e in self.policy.victims(layer, resident, count - len(free), keep):
                slot = int(pool.slot_of[e])
                pool.slot_of[e] = -1
                pool.expert_of[slot] = -1
                pool.ahead.discard(e)
                free.append(slot)
        if len(free) < count:
            raise RuntimeError(f"internal error: layer {layer} has no room for {count} experts")
        return free

    def _place(self, layer: int, expert: int, slot: int) -> None:
        pool = self.pools[layer]
        pool.expert_of[slot], pool.slot_of[expert] = expert, slot
        pool.view = None

    def _pool_view(self, layer: int) -> SwitchMXFP4GLU:
        pool = self.pools[layer]
        if pool.view is None:
            held = mx.array(np.maximum(pool.expert_of, 0).astype(np.uint32))  # empty slots: any row, never read
            pool.view = pool.rows.layer(self.template, {p: b[held] for p, b in self.biases[layer].items()})
        return pool.view

    def pooled(self, layer: int, ids: np.ndarray, fn: SegmentFn) -> list[tuple[Any, Pairs]]:
        """A decode step: the experts `ids` [N, k] need, resident in the layer's slots; one part."""
        pool = self.pools[layer]
        self._settle(layer)
        needed = np.unique(ids)
        missing = [int(e) for e in needed if pool.slot_of[e] < 0]
        self.stats.decode_calls += 1
        self.stats.hits += len(needed) - len(missing)
        self.stats.misses += len(missing)
        used_ahead = pool.ahead & set(needed.tolist())
        self.stats.prefetch_used += len(used_ahead)
        pool.ahead -= used_ahead
        if missing:
            self._writable(pool)
            for e, slot in zip(missing, self._make_room(layer, len(missing), set(needed.tolist()))):
                self.stats.decode_bytes += self._read(layer, e, pool.rows.views, slot)
                self._place(layer, e, slot)
        self.policy.used(layer, needed)
        self._read_ahead(layer + 1)
        part = fn(self._pool_view(layer), mx.array(pool.slot_of[ids].astype(np.uint32)), None)
        pool.pending.append(part)
        if len(pool.pending) > MAX_PENDING:
            self._writable(pool)
        return [(part, None)]

    # -- reading ahead --------------------------------------------------------------------------------

    def expect(self, layer: int, x: mx.array) -> None:
        """The MoE input of `layer`: the next layer's router applied to it predicts that layer's experts."""
        if self._io is None or layer + 1 >= len(self.pools) or x.shape[0] > POOL_TOKENS:
            return
        logits = self.routers[layer + 1](x)
        self._expected[layer + 1] = mx.argsort(-logits, axis=-1)[:, : self.k]

    def _read_ahead(self, layer: int) -> None:
        """Read the experts predicted for `layer` that it does not hold, on the I/O thread."""
        predicted = self._expected.pop(layer, None)
        if predicted is None:
            return
        pool = self.pools[layer]
        wanted = [int(e) for e in np.unique(np.asarray(predicted)) if pool.slot_of[e] < 0 and int(e) not in pool.incoming]
        if not wanted:
            return
        self._writable(pool)
        for e, slot in zip(wanted, self._make_room(layer, len(wanted), set())):
            self._place(layer, e, slot)
            pool.incoming[e] = self._io.submit(self._read, layer, e, pool.rows.views, slot)
            pool.ahead.add(e)
            self.stats.prefetched += 1

    # -- calls in parts -------------------------------------------------------------------------------

    def in_parts(self, layer: int, ids: np.ndarray, fn: SegmentFn) -> list[tuple[Any, Pairs]]:
        """Any call: its experts in parts of ascending ids through the segment buffer, each part's
        result evaluated before the next part is read (resident experts are copied from the pool)."""
        pool, seg = self.pools[layer], self.segment
        self._settle(layer)
        needed = np.unique(ids)
        flat = ids.reshape(-1)
        self.policy.used(layer, needed)
        self.stats.segment_calls += 1
        parts = []
        for start in range(0, needed.size, seg.count):
            group = needed[start : start + seg.count]
            for row, e in enumerate(group.tolist()):
                slot = int(pool.slot_of[e])
                if slot >= 0:
                    for name, view in seg.views.items():
                        view[row] = pool.rows.views[name][slot]
                    continue
                self.stats.segment_bytes += self._read(layer, e, seg.views, row)
                free = np.flatnonzero(pool.expert_of < 0)
                if free.size:  # a pool with room keeps what prefill read (decode starts warm)
                    self._writable(pool)
                    for name, view in pool.rows.views.items():
                        view[free[0]] = seg.views[name][row]
                    self._place(layer, e, int(free[0]))
            local = np.full(self.num_experts, -1, dtype=np.int64)
            local[group] = np.arange(group.size)
            pairs = np.flatnonzero(local[flat] >= 0)
            padded = mx.array(np.resize(group, seg.count).astype(np.uint32))  # rows past the group: never read
            view = seg.layer(self.template, {p: b[padded] for p, b in self.biases[layer].items()})
            part = fn(view, mx.array(local[flat[pairs]].astype(np.uint32)), pairs)
            if isinstance(part, mx.array):
                mx.eval(part)  # done reading the buffer before the next part overwrites it
            parts.append((part, pairs))
            self.stats.segment_parts += 1
        return parts


_MX_DTYPES = {"U32": mx.uint32, "U8": mx.uint8}


def _release(fds: dict[str, int], io: Optional[ThreadPoolExecutor]) -> None:
    """What an `ExpertCache` holds outside memory: its I/O thread and file descriptors."""
    if io is not None:
        io.shutdown(wait=True)
    for fd in fds.values():
        os.close(fd)
    fds.clear()


class OffloadedExperts:
    """A MoE layer's experts held by an `ExpertCache`: what the expert paths read instead of a
    `SwitchMXFP4GLU` (same `num_experts`, `limit`, `alpha`; `map_segments` hands out resident parts)."""

    def __init__(self, cache: ExpertCache, layer: int):
        self.cache, self.layer = cache, layer
        self.num_experts = cache.num_experts
        self.limit, self.alpha = cache.template.limit, cache.template.alpha

    def expect(self, x: mx.array) -> None:
        self.cache.expect(self.layer, x)

    def map_segments(self, idx: mx.array, fn: SegmentFn) -> list[tuple[Any, Pairs]]:
        predicted = self.cache._expected.get(self.layer + 1)
        mx.eval(idx, *([predicted] if predicted is not None else []))  # one host sync for both
        ids = np.asarray(idx).astype(np.int64)
        if ids.shape[0] <= POOL_TOKENS and np.unique(ids).size <= self.cache.settings.slots:
            return self.cache.pooled(self.layer, ids, fn)
        self.cache._expected.pop(self.layer + 1, None)
        return self.cache.in_parts(self.layer, ids, fn)
