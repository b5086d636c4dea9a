"""How a MoE block evaluates its router and experts: one `ExpertPath`, chosen once per model.

- `TwinPath`: the float32 MLX twins of the Metal kernels. They *define* what the kernels compute;
  tests compare every other path with them. Not a production path.
- `MLXPath`: the fast MLX path that runs wherever the kernels do not (CUDA, the CPU, a Mac whose
  kernels stepped aside): activations in the model's dtype straight into `gather_qmm`, tokens sorted
  by expert for prefill, a top-k router whose cost is O(N*E) and whose ties go to the lower id.
- `HostPath`: the CPU backend's prefill: each used expert dequantized once, multiplied on numpy's
  BLAS (the CPU wheel's MXFP4 matmul is a scalar loop); decode and small batches go to its inner path.
- `KernelPath`: the Metal kernels for decode (<= 8 tokens) where they passed their self-test, its
  inner path otherwise.

`choose_expert_path("auto")` picks per backend: Metal -> kernels over MLX; CPU -> host over MLX;
CUDA and other GPUs -> MLX.
"""

from __future__ import annotations

import os
from typing import Optional, Protocol

import mlx.core as mx

from .backend import backend_name
from .host_experts import host_experts
from .kernels.runtime import MAX_KERNEL_TOKENS, KernelSet, twin_experts
from .kernels.twins import route_twin
from .moe import SwitchMXFP4GLU, swiglu

PATH_NAMES = ("auto", "kernels", "mlx", "host", "twin")
HOST_MIN_ROWS = 16  # CPU backend: token*expert pairs from which dequantize + host BLAS pays off
SORT_MIN_PAIRS = 64  # token*expert pairs from which sorting by expert beats an unsorted gather


class ExpertPath(Protocol):
    name: str

    def route(self, logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
        """logits [N, E] -> (expert ids [N, k] uint32 in rank order, float32 weights [N, k])."""
        ...

    def experts(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU) -> mx.array:
        """x [N, H] -> sum_k w[:, k] * expert_{idx[:, k]}(x), [N, H] in x's dtype."""
        ...


def ranked_top_k(logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """Top-k expert ids by (logit descending, id ascending) and the softmax over their logits.

    Exactly the twins' and the kernel's choice, ties included, in O(N*E): each float32 logit becomes
    an order-preserving integer, shifted left to make room for the inverted expert id, so every key
    is unique and one argpartition picks the k largest; the k are then put in rank order.
    """
    n_experts = logits.shape[-1]
    lg = logits.astype(mx.float32) + 0.0  # -0.0 -> +0.0: equal logits must get equal keys
    bits = mx.view(lg, mx.int32)
    ordered = mx.where(bits < 0, bits ^ 0x7FFFFFFF, bits).astype(mx.int64)
    id_bits = max(1, (n_experts - 1).bit_length())
    inverted_id = (n_experts - 1) - mx.arange(n_experts, dtype=mx.int64)
    keys = (ordered << id_bits) | inverted_id
    top = mx.argpartition(-keys, kth=k - 1, axis=-1)[..., :k]
    rank = mx.argsort(-mx.take_along_axis(keys, top, axis=-1), axis=-1)
    idx = mx.take_along_axis(top, rank, axis=-1)
    vals = mx.take_along_axis(lg, idx, axis=-1)
    return idx.astype(mx.uint32), mx.softmax(vals, axis=-1, precise=True)


class TwinPath:
    """The kernels' float32 twins (the definition the kernels and every other path are tested against)."""

    name = "twin"

    def route(self, logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
        return route_twin(logits, k)

    def experts(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU) -> mx.array:
        return twin_experts(x, idx, w, layer)


class MLXPath:
    """MLX operations only, in the model's activation dtype."""

    name = "mlx"

    def __init__(self, sort_min_pairs: int = SORT_MIN_PAIRS):
        self.sort_min_pairs = sort_min_pairs

    def route(self, logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
        return ranked_top_k(logits, k)

    def experts(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU) -> mx.array:
        if idx.size >= self.sort_min_pairs:
            return self._sorted(x, idx, w, layer)
        return self._gathered(x, idx, w, layer)

    @staticmethod
    def _gathered(x: mx.array, idx: mx.array, w: mx.array, m: SwitchMXFP4GLU) -> mx.array:
        """Few tokens (decode): every token against its k experts, no sorting."""
        xs = x[:, None, None, :]  # [N, 1, 1, H] broadcasts against idx [N, k]
        g = m.gate_proj.gather(xs, idx).squeeze(-2) + m.gate_proj.bias[idx]
        u = m.up_proj.gather(xs, idx).squeeze(-2) + m.up_proj.bias[idx]
        a = swiglu(g, u, m.limit, m.alpha)
        d = m.down_proj.gather(a[:, :, None, :], idx).squeeze(-2) + m.down_proj.bias[idx]
        return (d * w[..., None].astype(d.dtype)).sum(axis=1)

    @staticmethod
    def _sorted(x: mx.array, idx: mx.array, w: mx.array, m: SwitchMXFP4GLU) -> mx.array:
        """Many tokens (prefill): token*expert pairs sorted by expert, so each expert's rows are read once."""
        N, k = idx.shape
        flat = idx.flatten()
        order = mx.argsort(flat)
        inv = mx.argsort(order)
        sidx = flat[order]
        xs = x[order // k][:, None, :]  # [N*k, 1, H], grouped by expert
        g = m.gate_proj.gather(xs, sidx, True) + m.gate_proj.bias[sidx][:, None, :]
        u = m.up_proj.gather(xs, sidx, True) + m.up_proj.bias[sidx][:, None, :]
        a = swiglu(g, u, m.limit, m.alpha)
        d = m.down_proj.gather(a, sidx, True) + m.down_proj.bias[sidx][:, None, :]
        d = d.squeeze(1)[inv].reshape(N, k, -1)
        return (d * w[..., None].astype(d.dtype)).sum(axis=1)


class HostPath:
    """CPU prefill on the host BLAS (float32 throughout); small batches go to `inner`."""

    name = "host"

    def __init__(self, inner: Optional[ExpertPath] = None, min_rows: int = HOST_MIN_ROWS):
        self.inner = inner if inner is not None else MLXPath()
        self.min_rows = min_rows

    def route(self, logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
        return self.inner.route(logits, k)

    def experts(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU) -> mx.array:
        if idx.size >= self.min_rows:
            return host_experts(x, idx, w, layer)
        return self.inner.experts(x, idx, w, layer)


class KernelPath:
    """The Metal kernels for decode where they passed their self-test; `inner` for everything else."""

    name = "kernels"

    def __init__(self, kernels: KernelSet, inner: Optional[ExpertPath] = None):
        self.kernels = kernels
        self.inner = inner if inner is not None else MLXPath()

    def route(self, logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
        if logits.shape[0] <= MAX_KERNEL_TOKENS:
            return self.kernels.route(logits, k, fallback=self.inner.route)
        return self.inner.route(logits, k)

    def experts(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU) -> mx.array:
        if idx.shape[0] <= MAX_KERNEL_TOKENS:
            return self.kernels.experts(x, idx, w, layer, fallback=self.inner.experts)
        return self.inner.experts(x, idx, w, layer)


def choose_expert_path(name: Optional[str] = None, kernels: Optional[KernelSet] = None) -> ExpertPath:
    """The path for a model. `name` None reads GPTOSS_EXPERT_PATH (default "auto"), once."""
    name = name or os.environ.get("GPTOSS_EXPERT_PATH") or "auto"
    if name not in PATH_NAMES:
        raise ValueError(f"expert path must be one of {', '.join(PATH_NAMES)}, got {name!r}")
    if name == "twin":
        return TwinPath()
    if name == "mlx":
        return MLXPath()
    if name == "host":
        return HostPath()
    if name == "kernels":
        return KernelPath(kernels if kernels is not None else KernelSet())
    backend = backend_name()
    if backend == "cpu":
        return HostPath(kernels_or_mlx(kernels))
    return kernels_or_mlx(kernels if kernels is not None else KernelSet())


def kernels_or_mlx(kernels: Optional[KernelSet]) -> ExpertPath:
    return KernelPath(kernels) if kernels is not None and kernels.active else MLXPath()
