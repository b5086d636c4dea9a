"""KV caches: a ring buffer for sliding-window layers, step-grown buffers for full layers.

Both support exact snapshot/restore and trimming, which prompt reuse across chat turns and
speculative decoding need (mlx-lm's rotating cache cannot be trimmed once it wrapped):

- Full layers never overwrite a position below the current offset, so a snapshot is just an
  offset, valid as long as the cache was not cut below it and rewritten since.
- Sliding layers keep `capacity >= window` slots; position p lives in slot p % capacity. A
  snapshot keeps the ring arrays (a copy-on-write reference), so restoring is exact even after
  the ring wrapped many times. Trimming without a snapshot is exact for up to
  `capacity - window + 1` positions (one with the default capacity == window).

Masks are derived from positions, never from slot order: query position q sees key position k
iff 0 <= q - k < window (sliding) or k <= q (full).

Speculative decoding feeds drafts it may have to take back. Inside `ModelCache.deferred_writes()`,
sliding layers attend to their ring plus the new positions but write nothing into the ring;
`settle(keep)` then writes just the kept positions (and full layers drop the rest). The rollback is
exact however often the ring wrapped, and costs no trim slack.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import mlx.core as mx
import numpy as np

from .errors import CacheError

Mask = Optional[Union[str, mx.array]]
FULL_STEP = 256  # growth step: padding beyond the offset costs attention time on GPUs (cuDNN)


def _window_mask(q_start: int, n_q: int, key_pos: np.ndarray, window: Optional[int]) -> mx.array:
    """Boolean [n_q, n_keys]: key visible to query iff 0 <= q - k (< window).

    Built by the device from the key positions (a prefill chunk's mask is millions of entries: making
    it on the host would cost tens of milliseconds per chunk)."""
    keys = mx.array(key_pos.astype(np.int32))[None, :]
    d = mx.arange(q_start, q_start + n_q, dtype=mx.int32)[:, None] - keys
    ok = (d >= 0) & (keys >= 0)
    if window is not None:
        ok = ok & (d < window)
    return ok


class FullCache:
    """Keys/values of every position, grown in steps of `step` positions."""

    def __init__(self, step: int = FULL_STEP):
        self.step = step
        self.keys: Optional[mx.array] = None
        self.values: Optional[mx.array] = None
        self.offset = 0
        self._cuts: list[int] = []

    def mask(self, n_new: int) -> Mask:
        return "causal" if n_new > 1 else None

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        B, H, T, D = k.shape
        end = self.offset + T
        if self.keys is None or end > self.keys.shape[2]:
            cap = -(-end // self.step) * self.step
            new_k = mx.zeros((B, H, cap, D), dtype=k.dtype)
            new_v = mx.zeros((B, H, cap, v.shape[3]), dtype=v.dtype)
            if self.keys is not None and self.offset:
                new_k[..., : self.offset, :] = self.keys[..., : self.offset, :]
                new_v[..., : self.offset, :] = self.values[..., : self.offset, :]
            self.keys, self.values = new_k, new_v
        self.keys[..., self.offset : end, :] = k
        self.values[..., self.offset : end, :] = v
        self.offset = end
        return self.keys[..., :end, :], self.values[..., :end, :]

    def trim(self, n: int) -> None:
        n = min(n, self.offset)
        if n:
            self.offset -= n
            self._cuts.append(self.offset)

    def snapshot(self) -> "LayerSnapshot":
        return LayerSnapshot(self.offset, len(self._cuts), None, None)

    def check_restorable(self, snap: "LayerSnapshot") -> None:
        if any(c < snap.offset for c in self._cuts[snap.n_cuts :]):
            raise CacheError("snapshot is no longer valid: the cache was cut below it since")

    def restore(self, snap: "LayerSnapshot") -> None:
        self.check_restorable(snap)
        if snap.offset != self.offset:
            if snap.offset < self.offset:
                self._cuts.append(snap.offset)
            self.offset = snap.offset

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


class SlidingWindowCache:
    """The last `window` positions (plus optional slack for trimming) in a ring buffer."""

    def __init__(self, window: int, trim_slack: int = 0):
        self.window = window
        self.capacity = window + trim_slack
        self.keys: Optional[mx.array] = None
        self.values: Optional[mx.array] = None
        self.offset = 0
        self.defer = False
        self.pending: Optional[tuple[mx.array, mx.array, int]] = None  # (keys, values, first position)

    def _slot_positions(self, offset: int) -> np.ndarray:
        """Position held by each slot (in slot order) once `offset` positions have been written."""
        if offset <= self.capacity:
            return np.arange(offset)
        s = np.arange(self.capacity)
        return s + self.capacity * ((offset - 1 - s) // self.capacity)

    def mask(self, n_new: int) -> Mask:
        """Mask for the keys the next update_and_fetch(n_new tokens) will return."""
        if n_new == 1 and not self.defer:
            held = min(self.offset + 1, self.capacity)
            if held <= self.window:
                return None  # every held position is inside the window
            return _window_mask(self.offset, 1, self._slot_positions(self.offset + 1), self.window)
        pos = np.concatenate([self._slot_positions(self.offset), np.arange(self.offset, self.offset + n_new)])
        return _window_mask(self.offset, n_new, pos, self.window)

    def _write(self, k: mx.array, v: mx.array, first_pos: int) -> None:
        """Write consecutive positions first_pos.. (at most `capacity` of them) into their slots."""
        T = k.shape[2]
        start = first_pos % self.capacity
        head = min(T, self.capacity - start)
        self.keys[..., start : start + head, :] = k[..., :head, :]
        self.values[..., start : start + head, :] = v[..., :head, :]
        if head < T:
            self.keys[..., : T - head, :] = k[..., head:, :]
            self.values[..., : T - head, :] = v[..., head:, :]

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        B, H, T, D = k.shape
        if self.keys is None:
            self.keys = mx.zeros((B, H, self.capacity, D), dtype=k.dtype)
            self.values = mx.zeros((B, H, self.capacity, v.shape[3]), dtype=v.dtype)
        if T == 1 and not self.defer:
            self._write(k, v, self.offset)
            self.offset += 1
            n = min(self.offset, self.capacity)
            return self.keys[..., :n, :], self.values[..., :n, :]
        held = min(self.offset, self.capacity)
        all_k = mx.concatenate([self.keys[..., :held, :], k], axis=2)
        all_v = mx.concatenate([self.values[..., :held, :], v], axis=2)
        if self.defer:
            if self.pending is not None:
                raise CacheError("one deferred update at a time: settle() the last one first")
            self.pending = (k, v, self.offset)
        else:
            keep = min(T, self.capacity)
            self._write(k[..., T - keep :, :], v[..., T - keep :, :], self.offset + T - keep)
        self.offset += T
        return all_k, all_v

    def settle(self, keep: int) -> None:
        """Write the first `keep` positions of the deferred update; forget the rest."""
        if self.pending is None:
            return
        k, v, first = self.pending
        self.pending = None
        keep = min(keep, k.shape[2])
        tail = min(keep, self.capacity)
        if tail:
            self._write(k[..., keep - tail : keep, :], v[..., keep - tail : keep, :], first + keep - tail)
        self.offset = first + keep

    def trim(self, n: int) -> None:
        n = min(n, self.offset)
        if n == 0:
            return
        if self.pending is not None:  # a deferred update is taken back (partly): nothing to undo in the ring
            first, end = self.pending[2], self.offset
            self.settle(max(0, end - n - first))
            n = max(0, first - (end - n))
            if n == 0:
                return
        if self.offset > self.capacity and n > self.capacity - self.window + 1:
            raise CacheError(
                f"cannot trim a sliding-window cache by {n} positions exactly "
                f"(at most {self.capacity - self.window + 1}); restore a snapshot instead"
            )
        self.offset -= n

    def snapshot(self) -> "LayerSnapshot":
        snap = LayerSnapshot(self.offset, 0, self.keys, self.values)
        if self.keys is not None:
            # later writes mutate our arrays in place: keep the snapshot's own objects untouched
            self.keys, self.values = mx.array(self.keys), mx.array(self.values)
        return snap

    def restore(self, snap: "LayerSnapshot") -> None:
        self.offset = snap.offset
        if snap.keys is None:
            self.keys = self.values = None
        else:
            self.keys, self.values = mx.array(snap.keys), mx.array(snap.values)

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


LayerCache = Union[FullCache, SlidingWindowCache]


@dataclass(frozen=True)
class LayerSnapshot:
    offset: int
    n_cuts: int
    keys: Optional[mx.array]
    values: Optional[mx.array]


@dataclass(frozen=True)
class CacheSnapshot:
    """A whole-model cache state; cheap (ring copies for sliding layers, offsets otherwise)."""

    offset: int
    layers: tuple[LayerSnapshot, ...]
    owner: int


class ModelCache:
    """The per-layer caches of one sequence batch, moved together."""

    def __init__(self, layer_types: list[str], window: int, trim_slack: int = 0):
        self.layers: list[LayerCache] = [
            SlidingWindowCache(window, trim_slack) if t == "sliding_attention" else FullCache()
            for t in layer_types
        ]
        self._sliding = next((c for c in self.layers if isinstance(c, SlidingWindowCache)), None)
        self._full = next((c for c in self.layers if isinstance(c, FullCache)), None)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> LayerCache:
        return self.layers[i]

    @property
    def offset(self) -> int:
        return self.layers[0].offset if self.layers else 0

    def masks(self, n_new: int) -> tuple[Mask, Mask]:
        """(full-layer mask, sliding-layer mask) for the next forward of n_new tokens."""
        full = self._full.mask(n_new) if self._full else None
        sliding = self._sliding.mask(n_new) if self._sliding else None
        return full, sliding

    def trim(self, n: int) -> int:
        """Drop the last n positions (exact or CacheError); returns the new offset."""
        sl = self._sliding
        if sl is not None:
            written = sl.offset if sl.pending is None else sl.pending[2]  # positions already in the ring
            beyond = min(n, self.offset) - (sl.offset - written)  # how far the trim reaches into the ring
            limit = sl.capacity - sl.window + 1
            if written > sl.capacity and beyond > limit:
                raise CacheError(
                    f"cannot trim {n} positions exactly (sliding layers keep {limit}); restore a snapshot instead"
                )
        for c in self.layers:
            c.trim(n)
        return self.offset

    def resync(self, max_offset: int) -> Optional[int]:
        """Bring every layer to one offset <= max_offset after an interrupted forward pass.

        A KeyboardInterrupt can land between two layers' updates, leaving some layers one chunk
        ahead. Layers are trimmed back to the smallest offset (exact for what sliding layers can
        trim); returns the common offset, or None when that is impossible (the caller resets).
        """
        target = min([max_offset] + [c.offset for c in self.layers])
        try:
            for c in self.layers:
                if c.offset > target:
                    c.trim(c.offset - target)
        except CacheError:
            return None
        return target

    def snapshot(self) -> CacheSnapshot:
        return CacheSnapshot(self.offset, tuple(c.snapshot() for c in self.layers), id(self))

    def restore(self, snap: CacheSnapshot) -> None:
        if snap.owner != id(self):
            raise CacheError("snapshot belongs to another cache")
        for c, s in zip(self.layers, snap.layers):
            if isinstance(c, FullCache):
                c.check_restorable(s)  # all-or-nothing: validate every layer before changing one
        for c, s in zip(self.layers, snap.layers):
            c.restore(s)

    @contextmanager
    def deferred_writes(self) -> Iterator["ModelCache"]:
        """Forward passes inside may be taken back: call `settle(keep)` after each one."""
        sliding = [c for c in self.layers if isinstance(c, SlidingWindowCache)]
        for c in sliding:
            c.defer = True
        try:
            yield self
        finally:
            for c in sliding:
                c.defer = False

    def settle(self, drop: int) -> int:
        """After a deferred forward: take back its last `drop` positions exactly (0: keep it all)."""
        for c in self.layers:
            if isinstance(c, SlidingWindowCache) and c.pending is not None:
                c.settle(c.offset - c.pending[2] - drop)
            elif isinstance(c, FullCache) and drop:
                c.trim(drop)
        return self.offset

    def state_arrays(self) -> list[mx.array]:
        """Arrays to evaluate after a prefill chunk (bounds the graph and memory)."""
        out = []
        for c in self.layers:
            if c.keys is not None:
                out += [c.keys, c.values]
        return out

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.layers)
