"""The mixture-of-experts block: router (top-k then softmax) and MXFP4 SwiGLU experts.

Experts are stored in the runtime layout (uint32 MXFP4 words, uint8 E8M0 scales, float biases)
and never dequantized as a whole. The block picks an evaluation path per call:

- decode (up to 8 tokens): the fused Metal kernels of `metal_runtime.kernels` where they passed
  their self-test, else their MLX twins (float32 inside);
- ``sorted``: `gather_qmm` over tokens sorted by expert (prefill on GPU backends);
- ``host``: on the CPU backend, prefill dequantizes each used expert once and multiplies on the
  host BLAS (numpy's OpenBLAS), because the CPU wheel's MXFP4 matmul is a scalar loop.
GPTOSS_EXPERT_PATH=twin|sorted|host forces a path (tests use it to compare them).

The expert set is a parameter (`num_experts` of this block), not a constant, so expert-parallel
sharding can later give each rank a slice.
"""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn

from .backend import backend_name
from .kernels.runtime import MAX_KERNEL_TOKENS, default_kernels, twin_experts
from .kernels.twins import route_twin

GROUP = 32
HOST_MIN_ROWS = 16  # CPU backend: token*expert pairs from which dequantize + host BLAS pays off
TWIN_ROUTE_MAX = 1 << 22  # route_twin compares all expert pairs: N * E * E booleans


def swiglu(gate: mx.array, up: mx.array, limit: float, alpha: float = 1.702) -> mx.array:
    """gpt-oss's clamped SwiGLU: min(g, limit) * sigmoid(alpha * g) * (clip(u, -limit, limit) + 1)."""
    g = mx.minimum(gate, limit)
    u = mx.clip(up, -limit, limit)
    return g * mx.sigmoid(alpha * g) * (u + 1)


def route(logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """Top-k expert ids and softmax weights over those k. Ties go to the lower id (kernel semantics)."""
    n, e = logits.shape
    if n <= MAX_KERNEL_TOKENS:
        return default_kernels().route(logits, k)
    if n * e * e <= TWIN_ROUTE_MAX:
        return route_twin(logits, k)
    idx = mx.argpartition(-logits, kth=k - 1, axis=-1)[..., :k]  # large prefill: ties unordered
    vals = mx.take_along_axis(logits, idx, axis=-1)
    return idx.astype(mx.uint32), mx.softmax(vals.astype(mx.float32), axis=-1, precise=True)


class MXFP4Projection(nn.Module):
    """One projection of all experts: weight [E, out, in/8] u32, scales [E, out, in/32] u8, bias [E, out]."""

    def __init__(self, num_experts: int, in_dims: int, out_dims: int):
        super().__init__()
        self.weight = mx.zeros((num_experts, out_dims, in_dims // 8), dtype=mx.uint32)
        self.scales = mx.zeros((num_experts, out_dims, in_dims // GROUP), dtype=mx.uint8)
        self.bias = mx.zeros((num_experts, out_dims))

    def gather(self, x: mx.array, idx: mx.array, sorted_indices: bool = False) -> mx.array:
        return mx.gather_qmm(
            x, self.weight, self.scales, None, rhs_indices=idx, transpose=True,
            group_size=GROUP, bits=4, mode="mxfp4", sorted_indices=sorted_indices,
        )


class SwitchMXFP4GLU(nn.Module):
    """All experts of one layer; computes sum_k w_k * (down_k(swiglu(gate_k x, up_k x)) + b_k)."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, limit: float, alpha: float = 1.702):
        super().__init__()
        self.num_experts = num_experts
        self.limit = limit
        self.alpha = alpha
        self.gate_proj = MXFP4Projection(num_experts, hidden, intermediate)
        self.up_proj = MXFP4Projection(num_experts, hidden, intermediate)
        self.down_proj = MXFP4Projection(num_experts, intermediate, hidden)

    def path_for(self, n_tokens: int, n_pairs: int) -> str:
        forced = os.environ.get("GPTOSS_EXPERT_PATH")
        if forced in ("twin", "sorted", "host"):
            return forced
        if n_tokens <= MAX_KERNEL_TOKENS:
            return "decode"
        if backend_name() == "cpu":
            return "host" if n_pairs >= HOST_MIN_ROWS else "twin"
        return "sorted"

    def __call__(self, x: mx.array, idx: mx.array, weights: mx.array) -> mx.array:
        """x [N, H], idx [N, k] uint32, weights [N, k] float32 -> [N, H] in x's dtype."""
        path = self.path_for(x.shape[0], idx.size)
        if path == "decode":
            return default_kernels().experts(x, idx, weights, self)
        if path == "host":
            from .host_experts import host_experts

            return host_experts(x, idx, weights, self)
        if path == "sorted":
            return self._sorted(x, idx, weights)
        return twin_experts(x, idx, weights, self)

    def _sorted(self, x: mx.array, idx: mx.array, weights: mx.array) -> mx.array:
        N, k = idx.shape
        flat = idx.flatten()
        order = mx.argsort(flat)
        inv = mx.argsort(order)
        sidx = flat[order]
        xs = x[order // k][:, None, :]  # [N*k, 1, H], grouped by expert
        g = self.gate_proj.gather(xs, sidx, True) + self.gate_proj.bias[sidx][:, None, :]
        u = self.up_proj.gather(xs, sidx, True) + self.up_proj.bias[sidx][:, None, :]
        a = swiglu(g, u, self.limit, self.alpha)
        d = self.down_proj.gather(a, sidx, True) + self.down_proj.bias[sidx][:, None, :]
        d = d.squeeze(1)[inv].reshape(N, k, -1)
        return (d * weights[..., None].astype(d.dtype)).sum(axis=1)


class MLPBlock(nn.Module):
    """Router + experts of one transformer layer."""

    def __init__(self, hidden: int, intermediate: int, num_experts: int, experts_per_token: int,
                 limit: float, alpha: float = 1.702):
        super().__init__()
        self.experts_per_token = experts_per_token
        self.router = nn.Linear(hidden, num_experts, bias=True)
        self.experts = SwitchMXFP4GLU(num_experts, hidden, intermediate, limit, alpha)

    def __call__(self, x: mx.array) -> mx.array:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        idx, w = route(self.router(flat), self.experts_per_token)
        return self.experts(flat, idx, w).reshape(shape)
