"""One model across several Macs: MLX's distributed group, broadcasts from rank 0, expert parallelism.

Launched by MLX's own launcher (`mlx.launch --hostfile hosts.json -- gptoss serve MODEL`), each
process is one rank. Every rank holds the dense weights (attention, router, embeddings) and a block
of the experts of every layer; a MoE block computes the contributions of the experts this rank holds
to its tokens and one `all_sum` per layer adds the ranks' partial sums (float32: partial sums rounded
to bf16 change greedy tokens). Rank 0 talks to the user; the other ranks must run exactly the same
forward passes, so rank 0's prompt tokens and sampled tokens are broadcast (an `all_sum` with zeros
on the other ranks; sampled tokens inside the graph, so decoding stays pipelined).

Two MLX facts shape this code (docs/ARCHITECTURE.md, "Beyond one Mac"):
- collectives in a lazy graph run in dependency order only, so every rank must build the same
  collectives in the same dependency chain: a broadcast's input depends on the step's logits on every
  rank (`mx.depends`), never a constant (MLX folds e.g. an argmax over a size-1 axis into one);
- a rank that never evaluates a collective the others evaluate makes them fail or hang.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from gptoss_metal.architecture import is_expert_tensor

from .bench import peak_rss_bytes
from .config import read_model_config
from .errors import RuntimeUserError
from .expert_paths import choose_expert_path
from .experts import ExpertPath, SwitchMXFP4GLU
from .loading import load
from .model import Model
from .sampling import SamplerState

COMPACT_MIN_ROWS = 16  # tokens from which a MoE block computes only this rank's (token, expert) pairs


class DistributedError(RuntimeUserError):
    """A group that cannot run: launched wrongly, more ranks than experts, a backend that fails to start."""


# -- the group --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistributedGroup:
    """This process's place in the group of ranks `mlx.launch` started."""

    rank: int
    size: int
    backend: str
    handle: Any  # mx.distributed.Group

    @property
    def leader(self) -> bool:
        return self.rank == 0


def launched_backend(env: Mapping[str, str] = os.environ) -> Optional[str]:
    """The backend `mlx.launch` set this process up for; None when not launched as one of several ranks.

    `mlx.launch -n 1` writes an empty hostfile, on which `mx.distributed.init` fails even when not
    strict: a single rank is simply not distributed.
    """
    if "MLX_RANK" not in env:
        return "mpi" if launched_size(env) > 1 else None
    if "MLX_JACCL_COORDINATOR" in env or "MLX_IBV_DEVICES" in env:
        return "jaccl"
    if "MLX_HOSTFILE" in env:
        return "ring" if launched_size(env, strict=True) > 1 else None
    if "MLX_WORLD_SIZE" in env:
        return "nccl"
    raise DistributedError(
        "MLX_RANK is set but no hostfile is (neither MLX_HOSTFILE for the ring backend nor "
        "MLX_JACCL_COORDINATOR for JACCL): start every rank with `mlx.launch --hostfile hosts.json -- gptoss ...`"
    )


def launched_rank(env: Mapping[str, str] = os.environ) -> int:
    """This process's rank as the launcher set it (before joining the group)."""
    for var in ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if env.get(var, "").isdigit():
            return int(env[var])
    return 0


def launched_size(env: Mapping[str, str] = os.environ, *, strict: bool = False) -> int:
    """The group's size as the launcher set it (before joining the group); 0 when it does not say.

    Without MLX_RANK, MPI's size (`mlx.launch --backend mpi` runs mpirun); with it, the length of the
    hostfile (MLX_HOSTFILE, else JACCL's MLX_IBV_DEVICES). A hostfile that cannot be read counts as no
    size, or with `strict` raises (a DistributedError saying why).
    """
    if "MLX_RANK" not in env:
        mpi = env.get("OMPI_COMM_WORLD_SIZE") or env.get("PMI_SIZE") or ""
        return int(mpi) if mpi.isdigit() else 0
    for var in ("MLX_HOSTFILE", "MLX_IBV_DEVICES"):
        if var not in env:
            continue
        try:
            hosts = json.loads(Path(env[var]).read_text().strip() or "null")
            if hosts:
                return len(hosts)
        except OSError as e:
            if strict:
                raise DistributedError(f"{var}={env[var]}: cannot read it ({e})") from None
        except json.JSONDecodeError as e:
            if strict:
                raise DistributedError(f"{var}={env[var]}: not the JSON mlx.launch writes ({e})") from None
        except (ValueError, TypeError):
            if strict:
                raise
    return 0


def init_group(env: Mapping[str, str] = os.environ) -> Optional[DistributedGroup]:
    """Join the group this process was launched into; None when it runs alone (nothing changes then)."""
    backend = launched_backend(env)
    if backend is None:
        return None
    try:
        handle = mx.distributed.init(strict=True, backend=backend)
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"cannot start MLX's {backend} backend: {e}") from None
    if handle.size() == 1:
        return None
    return DistributedGroup(handle.rank(), handle.size(), backend, handle)


# -- broadcasts and gathers -------------------------------------------------------------------------


def broadcast(a: mx.array, group: DistributedGroup) -> mx.array:
    """Rank 0's `a` on every rank, lazily (the others pass an array of the same shape and dtype).

    An all_sum with zeros elsewhere: exact for ids and floats (x + 0 = x).
    """
    return mx.distributed.all_sum(a if group.leader else mx.zeros_like(a), group=group.handle)


def broadcast_ints(values: Optional[Sequence[int]], count: int, group: DistributedGroup) -> list[int]:
    """Rank 0's `count` int32 values on every rank, now (others pass None)."""
    a = mx.array(list(values) if group.leader else [0] * count, dtype=mx.int32)
    return broadcast(a, group).tolist()


def broadcast_bytes(data: Optional[bytes], group: DistributedGroup) -> bytes:
    """Rank 0's bytes on every rank, now: the length, then the bytes."""
    (n,) = broadcast_ints([len(data)] if group.leader else None, 1, group)
    if n == 0:
        return b""
    buf = np.frombuffer(data, dtype=np.uint8) if group.leader else np.zeros(n, dtype=np.uint8)
    return bytes(np.array(broadcast(mx.array(buf), group)).astype(np.uint8))


def gather_json(obj: Any, group: DistributedGroup) -> list[Any]:
    """Every rank's JSON-able `obj`, in rank order, on every rank."""
    data = json.dumps(obj).encode()
    lengths = mx.zeros((group.size,), dtype=mx.int32)
    lengths[group.rank] = len(data)
    lengths = mx.distributed.all_sum(lengths, group=group.handle).tolist()
    rows = np.zeros((group.size, max(lengths)), dtype=np.uint8)
    rows[group.rank, : len(data)] = np.frombuffer(data, dtype=np.uint8)
    rows = np.array(mx.distributed.all_sum(mx.array(rows), group=group.handle)).astype(np.uint8)
    return [json.loads(bytes(rows[r, : lengths[r]])) for r in range(group.size)]


def barrier(group: DistributedGroup) -> None:
    """Return when every rank got here (MLX has no barrier: a one-element all_sum)."""
    mx.eval(mx.distributed.all_sum(mx.array(1), group=group.handle))


# -- sampling on rank 0 only ------------------------------------------------------------------------


class BroadcastSampler(SamplerState):
    """Rank 0 samples; every rank receives rank 0's choice, so every rank feeds the same tokens.

    Tokens and verification targets (greedy or sampled: sampling.py) are broadcast inside the graph
    (decode stays pipelined); on every rank the broadcast's input depends on the step's logits, so the
    broadcast comes after the step's MoE all_sums on every rank. `force(token)` (rank 0) makes every
    later choice `token` -- a stop id, to end a generation on all ranks at the same step when rank 0's
    caller stops it.
    """

    lockstep = True  # generate() then takes speculation decisions from tokens only, identically everywhere

    def __init__(self, group: DistributedGroup, temperature: float = 1.0, top_p: float = 1.0,
                 seed: Optional[int] = None):
        super().__init__(temperature, top_p, seed)
        self.group = group
        self.forced: Optional[int] = None

    def force(self, token: int) -> None:
        self.forced = int(token)

    def _share(self, mine: mx.array, logits: mx.array) -> mx.array:
        if not self.group.leader:
            mine = mx.zeros(mine.shape, dtype=mx.uint32)
        elif self.forced is not None:
            mine = mx.full(mine.shape, self.forced, dtype=mx.uint32)
        return mx.distributed.all_sum(mx.depends(mine, logits), group=self.group.handle)

    def __call__(self, logits: mx.array, index: int) -> mx.array:
        return self._share(self.draw(logits, index), logits)

    def targets(self, logits: mx.array, first_index: int) -> mx.array:
        return self._share(super().targets(logits, first_index), logits)


# -- expert parallelism -----------------------------------------------------------------------------


class ExpertParallelPath:
    """An `ExpertPath` for a rank holding experts [first, last) of every layer: `inner` runs them.

    Routing runs on every rank over all experts (the router is replicated), so all ranks agree on each
    token's k experts. This rank adds the contributions of the pairs routed to its experts (bias
    included: the sum over ranks is exactly the sum over k) and one all_sum of the float32 partials
    combines the ranks. Pairs routed elsewhere must cost nothing where that is cheap:
    - decode and verification (few tokens; no host sync, the step stays pipelined): a remote pair
      gets weight 0 and the id of an expert of this rank that the same token already uses, so no
      extra expert is read; only a token with none of its experts here reads one (local expert 0);
    - prefill (>= COMPACT_MIN_ROWS tokens): one host sync reads the routing, and `inner` runs on
      this rank's pairs only.
    """

    name = "expert-parallel"

    def __init__(self, inner: ExpertPath, group: DistributedGroup, first: int, last: int,
                 compact_min_rows: int = COMPACT_MIN_ROWS):
        self.inner = inner
        self.group = group
        self.first, self.last = first, last
        self.compact_min_rows = compact_min_rows

    def route(self, logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
        return self.inner.route(logits, k)

    def experts(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU,
                out_dtype: Optional[mx.Dtype] = None) -> mx.array:
        if idx.shape[0] >= self.compact_min_rows:
            partial = self._compact(x, idx, w, layer)
        else:
            partial = self._masked(x, idx, w, layer)
        return mx.distributed.all_sum(partial, group=self.group.handle).astype(out_dtype or x.dtype)

    def _masked(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU) -> mx.array:
        ids = idx.astype(mx.int32) - self.first
        here = (ids >= 0) & (ids < self.last - self.first)
        # a remote slot borrows the id of the token's first local slot (0 when the token has none here)
        first_here = mx.argmax(here.astype(mx.int32), axis=1, keepdims=True)
        borrowed = mx.where(here.any(axis=1, keepdims=True), mx.take_along_axis(ids, first_here, axis=1), 0)
        local = mx.where(here, ids, borrowed).astype(mx.uint32)
        return self.inner.experts(x, local, mx.where(here, w, 0.0), layer, out_dtype=mx.float32)

    def _compact(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU) -> mx.array:
        ids = np.array(idx).astype(np.int64)  # the host sync (evaluates this layer's routing)
        n, k = ids.shape
        here = (ids >= self.first) & (ids < self.last)
        pairs = np.flatnonzero(here)  # positions token * k + slot, routed to this rank
        pairs = pairs[np.argsort(ids.reshape(-1)[pairs], kind="stable")]  # grouped by expert
        if pairs.size == 0:
            return mx.zeros((n, x.shape[-1]), dtype=mx.float32)
        rows = mx.array(pairs // k)
        local = mx.array((ids.reshape(-1)[pairs] - self.first).astype(np.uint32))[:, None]
        y = self.inner.experts(x[rows], local, w.reshape(-1)[mx.array(pairs)][:, None], layer, out_dtype=mx.float32)
        # back to [token, slot] (remote slots read a zero row), then the float32 sum over the k slots
        where = np.full(n * k, pairs.size, dtype=np.int32)
        where[pairs] = np.arange(pairs.size, dtype=np.int32)
        y = mx.concatenate([y, mx.zeros((1, y.shape[-1]), dtype=y.dtype)])
        return y[mx.array(where)].reshape(n, k, -1).sum(axis=1)


def load_expert_parallel(path: Union[str, Path], group: DistributedGroup, dtype: str = "bfloat16",
                         experts: Union[str, ExpertPath, None] = None, max_memory: Optional[int] = None) -> Model:
    """This rank's model: the dense weights and its block of every layer's experts, nothing more read."""
    args, _ = read_model_config(Path(path).expanduser())
    n = args.num_local_experts
    if group.size > n:
        raise DistributedError(f"{group.size} ranks cannot share {n} experts: each rank needs at least one "
                               f"(launch at most {n} ranks)")
    first, last = args.expert_split(group.size)[group.rank]  # contiguous blocks, sizes differ by <= 1
    inner = experts if experts is not None and not isinstance(experts, str) else choose_expert_path(experts)
    return load(path, dtype=dtype, experts=ExpertParallelPath(inner, group, first, last),
                expert_slice=(first, last), max_memory=max_memory)


def held_bytes(model: Model) -> tuple[int, int]:
    """(expert bytes, dense bytes) this process holds for the model (arrays as loaded)."""
    experts = dense = 0
    for name, a in tree_flatten(model.parameters()):
        if is_expert_tensor(name):
            experts += a.nbytes
        else:
            dense += a.nbytes
    return experts, dense


def rank_report(model: Model, group: Optional[DistributedGroup]) -> dict[str, Any]:
    """What `gptoss doctor` shows per rank: host, expert slice, bytes held, peak resident memory."""
    first, last = expert_slice_of(model)
    experts, dense = held_bytes(model)
    return {"rank": group.rank if group else 0, "host": platform.node(), "experts": [first, last],
            "expert_bytes": experts, "dense_bytes": dense, "peak_rss_bytes": peak_rss_bytes()}


def expert_slice_of(model: Model) -> tuple[int, int]:
    """The experts [first, last) a model holds (all of them outside a group)."""
    p = model.expert_path
    if isinstance(p, ExpertParallelPath):
        return p.first, p.last
    return 0, model.args.num_local_experts
