"""How a MoE block evaluates its router and experts: one `ExpertPath`, chosen once per model.

- `TwinPath`: the float32 MLX twins of the Metal kernels. They *define* what the kernels compute;
  tests compare every other path with them. Not a production path.
- `MLXPath`: the fast MLX path that runs wherever the kernels do not (CUDA, the CPU, a Mac whose
  kernels stepped aside): activations in the model's dtype straight into `gather_qmm` (float32 on the
  CPU), tokens sorted by expert for prefill, compiled elementwise chains, a sort-based top-k router
  (O(E log E) per token, not the twin's E^2) whose ties go to the lower id.
- `HostPath`: the CPU backend's prefill: each used expert dequantized once, multiplied on numpy's
  BLAS (the CPU wheel's MXFP4 matmul is a scalar loop); decode and small batches go to its inner path.
- `KernelPath`: the Metal kernels for decode (<= 8 tokens) where they passed their self-test, its
  inner path otherwise.
- `CachedExpertsPath`: any of these over a model whose experts live in a bounded cache (the loader
  wraps the chosen path): each layer hears its MoE input first, to read the next layer's ahead.

Every path reads its experts through the layer's `map_segments` (experts.py) and combines the parts
as it combines one, so a cached layer gives the same numbers as a layer held whole.

`choose_expert_path("auto")` picks per backend: Metal -> kernels over MLX; CPU -> host (large prefill)
over MLX in float32; CUDA and other GPUs -> MLX in the model's dtype.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Optional

import mlx.core as mx

from .backend import backend_name
from .experts import ExpertPath, Pairs, SwitchMXFP4GLU, pair_rows, sum_pairs, swiglu
from .host_experts import host_experts
from .kernels.runtime import KernelSet
from .kernels.twins import experts_up_twin, route_twin, twin_experts, weighted_down_twin

PATH_NAMES = ("auto", "kernels", "mlx", "host", "twin")
HOST_MIN_ROWS_PER_EXPERT = 16  # CPU backend: dequantize + host BLAS pays off from ~17 rows per expert
SORT_MIN_PAIRS = 64  # token*expert pairs from which sorting by expert beats an unsorted gather
MAX_KERNEL_TOKENS = 8  # the Metal kernels are decode kernels: 1..8 tokens go to them, more to `inner`


def ranked_top_k(logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """Top-k expert ids by (logit descending, id ascending) and the softmax over their logits.

    Exactly the twins' and the kernel's choice, ties included, at O(E log E) per token: MLX's sort is
    stable on every backend (CPU, Metal and CUDA sort with stable merges), so equal logits keep id order;
    tests/test_expert_paths.py pins this against the twin on tie-heavy inputs.
    """
    idx = mx.argsort(-logits, axis=-1)[..., :k]
    vals = mx.take_along_axis(logits, idx, axis=-1)
    return idx.astype(mx.uint32), mx.softmax(vals.astype(mx.float32), axis=-1, precise=True)


@functools.lru_cache(maxsize=None)
def _chains(limit: float, alpha: float) -> tuple[Callable, Callable]:
    """The elementwise chains around the expert matmuls, each compiled into one kernel.

    `glu`: biases added and the clamped SwiGLU, in float32 inside (like the kernels), result in the
    input dtype. Not shapeless: in shapeless mode MLX leaves the input casts outside the fused kernel.
    `weigh`: the down projection's bias added and the routing weight applied, in float32.
    """

    @mx.compile
    def glu(g: mx.array, u: mx.array, bg: mx.array, bu: mx.array) -> mx.array:
        out = swiglu(g.astype(mx.float32) + bg.astype(mx.float32), u.astype(mx.float32) + bu.astype(mx.float32),
                     limit, alpha)
        return out.astype(g.dtype)

    @functools.partial(mx.compile, shapeless=True)
    def weigh(d: mx.array, bd: mx.array, w: mx.array) -> mx.array:
        return (d.astype(mx.float32) + bd.astype(mx.float32)) * w

    return glu, weigh


class TwinPath:
    """The kernels' float32 twins (the definition the kernels and every other path are tested against)."""

    name = "twin"

    def route(self, logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
        return route_twin(logits, k)

    def experts(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU,
                out_dtype: Optional[mx.Dtype] = None) -> mx.array:
        N, k = idx.shape

        def run(m: SwitchMXFP4GLU, ids: mx.array, pairs: Pairs) -> mx.array:
            if pairs is None:
                return twin_experts(x, ids, w, m, out_dtype)
            act = experts_up_twin(x[pair_rows(pairs, k)], ids[:, None], m.gate_proj, m.up_proj, m.limit, m.alpha)
            return weighted_down_twin(act, ids[:, None], w.flatten()[mx.array(pairs)][:, None], m.down_proj)

        parts = layer.map_segments(idx, run)
        if parts[0][1] is None:
            return parts[0][0]
        return sum_pairs(parts, N, k, (x.shape[-1],)).astype(out_dtype or x.dtype)


class MLXPath:
    """MLX operations only: `gather_qmm` on the activations, compiled elementwise chains.

    `compute_dtype` is what goes into the quantized matmuls: None keeps the model's activation dtype
    (bf16 on GPUs: half the bytes, the fast kernels); the CPU backend passes float32, because the CPU
    wheel's MXFP4 matmul is several times slower on bf16 input.
    """

    name = "mlx"

    def __init__(self, sort_min_pairs: int = SORT_MIN_PAIRS, compute_dtype: Optional[mx.Dtype] = None):
        self.sort_min_pairs = sort_min_pairs
        self.compute_dtype = compute_dtype

    def route(self, logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
        return ranked_top_k(logits, k)

    def experts(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU,
                out_dtype: Optional[mx.Dtype] = None) -> mx.array:
        xc = x if self.compute_dtype is None else x.astype(self.compute_dtype)
        N, k = idx.shape
        sort = idx.size >= self.sort_min_pairs

        def run(m: SwitchMXFP4GLU, ids: mx.array, pairs: Pairs) -> mx.array:
            if pairs is None:  # every pair at once, ids [N, k]
                if sort:
                    return self._sorted(xc, mx.arange(N * k) // k, ids.flatten(), w.flatten(), m).reshape(N, k, -1)
                return self._gathered(xc, ids, w, m)
            rows, wp = pair_rows(pairs, k), w.flatten()[mx.array(pairs)]
            if sort:
                return self._sorted(xc, rows, ids, wp, m)
            return self._gathered(xc[rows], ids[:, None], wp[:, None], m)

        parts = layer.map_segments(idx, run)
        if parts[0][1] is not None:
            y = sum_pairs(parts, N, k, (xc.shape[-1],) if sort else (1, xc.shape[-1]))
        else:
            y = parts[0][0].sum(axis=1)
        return (y if sort else y.squeeze(-2)).astype(out_dtype or x.dtype)

    @staticmethod
    def _gathered(x: mx.array, idx: mx.array, w: mx.array, m: SwitchMXFP4GLU) -> mx.array:
        """Few tokens (decode): every token against its k experts, no sorting; weighted values [N, k, 1, H]."""
        glu, weigh = _chains(m.limit, m.alpha)
        xs = x[:, None, None, :]  # [N, 1, 1, H] broadcasts against idx [N, k]
        g = m.gate_proj.gather(xs, idx)
        u = m.up_proj.gather(xs, idx)
        a = glu(g, u, m.gate_proj.bias[idx][..., None, :], m.up_proj.bias[idx][..., None, :])
        d = m.down_proj.gather(a, idx)
        return weigh(d, m.down_proj.bias[idx][..., None, :], w[..., None, None].astype(mx.float32))

    @staticmethod
    def _sorted(x: mx.array, rows: mx.array, ids: mx.array, w: mx.array, m: SwitchMXFP4GLU) -> mx.array:
        """Many tokens (prefill): pairs (token `rows[p]`, expert `ids[p]`, weight `w[p]`) sorted by expert,
        so each expert's rows are read once; the weighted values [P, H] in pair order."""
        glu, weigh = _chains(m.limit, m.alpha)
        order = mx.argsort(ids)
        sidx = ids[order]
        xs = x[rows[order]][:, None, :]  # [P, 1, H], grouped by expert
        g = m.gate_proj.gather(xs, sidx, True)
        u = m.up_proj.gather(xs, sidx, True)
        a = glu(g, u, m.gate_proj.bias[sidx][:, None, :], m.up_proj.bias[sidx][:, None, :])
        d = m.down_proj.gather(a, sidx, True).squeeze(1)
        y = weigh(d, m.down_proj.bias[sidx], w[order][:, None].astype(mx.float32))
        return y[mx.argsort(order)]


class HostPath:
    """CPU prefill on the host BLAS (float32 throughout); small batches go to `inner`."""

    name = "host"

    def __init__(self, inner: Optional[ExpertPath] = None, min_rows_per_expert: int = HOST_MIN_ROWS_PER_EXPERT):
        self.inner = inner if inner is not None else MLXPath(compute_dtype=mx.float32)
        self.min_rows_per_expert = min_rows_per_expert

    def route(self, logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
        return self.inner.route(logits, k)

    def experts(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU,
                out_dtype: Optional[mx.Dtype] = None) -> mx.array:
        if idx.size >= self.min_rows_per_expert * layer.num_experts:  # each expert's dequantization amortized
            return host_experts(x, idx, w, layer, out_dtype)
        return self.inner.experts(x, idx, w, layer, out_dtype)


class KernelPath:
    """The Metal kernels for decode where they passed their self-test; `inner` for everything else.

    A decode step whose experts a cached layer cannot hold at once (more distinct experts than its
    slots: a batch of many sequences) runs on `inner`, pair by pair.
    """

    name = "kernels"

    def __init__(self, kernels: KernelSet, inner: Optional[ExpertPath] = None):
        self.kernels = kernels
        self.inner = inner if inner is not None else MLXPath()

    def route(self, logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
        if logits.shape[0] <= MAX_KERNEL_TOKENS:
            return self.kernels.route(logits, k, fallback=self.inner.route)
        return self.inner.route(logits, k)

    def experts(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU,
                out_dtype: Optional[mx.Dtype] = None) -> mx.array:
        if idx.shape[0] > MAX_KERNEL_TOKENS:
            return self.inner.experts(x, idx, w, layer, out_dtype)
        N, k = idx.shape

        def run(m: SwitchMXFP4GLU, ids: mx.array, pairs: Pairs) -> mx.array:
            if pairs is None:
                return self.kernels.experts(x, ids, w, m, fallback=self.inner.experts, out_dtype=out_dtype)
            wp = w.flatten()[mx.array(pairs)][:, None]
            return self.inner.experts(x[pair_rows(pairs, k)], ids[:, None], wp, m, out_dtype=mx.float32)

        parts = layer.map_segments(idx, run)
        if parts[0][1] is None:
            return parts[0][0]
        return sum_pairs(parts, N, k, (x.shape[-1],)).astype(out_dtype or x.dtype)


class CachedExpertsPath:
    """`inner` for a model whose experts live in a bounded cache (expert_cache.py): each layer hears its
    MoE input before its experts are read, from which it predicts the next layer's and reads them ahead."""

    def __init__(self, inner: ExpertPath):
        self.inner = inner
        self.name = inner.name

    def route(self, logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
        return self.inner.route(logits, k)

    def experts(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU,
                out_dtype: Optional[mx.Dtype] = None) -> mx.array:
        expect = getattr(layer, "expect", None)
        if expect is not None:
            expect(x)
        return self.inner.experts(x, idx, w, layer, out_dtype)


def choose_expert_path(name: Optional[str] = None, kernels: Optional[KernelSet] = None) -> ExpertPath:
    """The path for a model. `name` None reads GPTOSS_EXPERT_PATH (default "auto"), once."""
    name = name or os.environ.get("GPTOSS_EXPERT_PATH") or "auto"
    if name not in PATH_NAMES:
        raise ValueError(f"expert path must be one of {', '.join(PATH_NAMES)}, got {name!r}")
    if name == "twin":
        return TwinPath()
    backend = backend_name()
    mlx_path = MLXPath(compute_dtype=mx.float32 if backend == "cpu" else None)
    if name == "mlx":
        return mlx_path
    if name == "host":
        return HostPath(mlx_path)
    if name == "kernels":
        return KernelPath(kernels if kernels is not None else KernelSet(), mlx_path)
    kernels = kernels if kernels is not None else KernelSet()
    inner = KernelPath(kernels, mlx_path) if kernels.active else mlx_path
    return HostPath(inner) if backend == "cpu" else inner
