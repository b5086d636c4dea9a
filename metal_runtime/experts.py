"""What every way of running a MoE layer's experts shares: the weights, the activation, the protocol.

A leaf of the expert path: the twins, the host path, the kernels, the expert paths and the MoE block
all import it, and it imports none of them. It holds
- the weight containers: `MXFP4Projection` (one projection of all experts, in the runtime layout:
  uint32 MXFP4 words, uint8 E8M0 scales, float biases) and `SwitchMXFP4GLU` (gate, up and down of
  all experts of one layer, never dequantized as a whole);
- `swiglu`, gpt-oss's clamped activation, the one MLX definition of it (the Metal kernel computes
  the same in MSL);
- `ExpertPath`, the protocol of a way to evaluate the router and experts (expert_paths.py holds the
  ways and the policy choosing one);
- `map_segments`, how a path reads the experts a call routes to: a container held in memory hands
  them over in one part; a layer whose experts live in a bounded cache (expert_cache.py) may need
  several parts, each a set of experts held at once. Paths compute per part and combine the parts
  exactly as they would combine one (`sum_pairs`), so the result does not depend on where the
  weights were.

The expert set is a parameter (`num_experts` of a container), not a constant: an expert-parallel
rank holds a slice of the experts of every layer.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from gptoss_metal.architecture import MXFP4_GROUP


def swiglu(gate: mx.array, up: mx.array, limit: float, alpha: float) -> mx.array:
    """gpt-oss's clamped SwiGLU: min(g, limit) * sigmoid(alpha * g) * (clip(u, -limit, limit) + 1)."""
    g = mx.minimum(gate, limit)
    u = mx.clip(up, -limit, limit)
    return g * mx.sigmoid(alpha * g) * (u + 1)


class MXFP4Projection(nn.Module):
    """One projection of all experts: weight [E, out, in/8] u32, scales [E, out, in/32] u8, bias [E, out]."""

    def __init__(self, num_experts: int, in_dims: int, out_dims: int):
        super().__init__()
        self.weight = mx.zeros((num_experts, out_dims, in_dims // 8), dtype=mx.uint32)
        self.scales = mx.zeros((num_experts, out_dims, in_dims // MXFP4_GROUP), dtype=mx.uint8)
        self.bias = mx.zeros((num_experts, out_dims))

    def gather(self, x: mx.array, idx: mx.array, sorted_indices: bool = False) -> mx.array:
        """x [..., 1, in] times the experts `idx` selects -> [..., 1, out] (no bias)."""
        return mx.gather_qmm(
            x, self.weight, self.scales, None, rhs_indices=idx, transpose=True,
            group_size=MXFP4_GROUP, bits=4, mode="mxfp4", sorted_indices=sorted_indices,
        )


class SwitchMXFP4GLU(nn.Module):
    """All experts of one layer: sum_k w_k * (down_k(swiglu(gate_k x, up_k x)) + b_k)."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, limit: float, alpha: float):
        super().__init__()
        self.num_experts = num_experts
        self.limit = limit
        self.alpha = alpha
        self.gate_proj = MXFP4Projection(num_experts, hidden, intermediate)
        self.up_proj = MXFP4Projection(num_experts, hidden, intermediate)
        self.down_proj = MXFP4Projection(num_experts, intermediate, hidden)

    def map_segments(self, idx: mx.array, fn: "SegmentFn") -> list[tuple[Any, Pairs]]:
        """`fn(weights, ids, pairs)` over the parts of the experts `idx` routes to that are held at once,
        with each part's pairs: here every expert is held, so one call with `idx` itself (no host sync)."""
        return [(fn(self, idx, None), None)]


# A part of a call: the pairs (token * k + slot, flat) whose experts one set of weights holds; None: all
# pairs of the call, with `ids` shaped [N, k] as routed. Otherwise `ids` [P] are the pairs' experts as
# rows of those weights.
Pairs = Optional[np.ndarray]
SegmentFn = Callable[[SwitchMXFP4GLU, mx.array, Pairs], Any]


def pair_rows(pairs: np.ndarray, k: int) -> mx.array:
    """The token (row of x) of each pair."""
    return mx.array(pairs // k)


def sum_pairs(parts: list[tuple[mx.array, Pairs]], n: int, k: int, shape: tuple[int, ...]) -> mx.array:
    """Per-pair float32 values of the parts, put back at token * k + slot, viewed as [n, k, *shape] and
    summed over k: the reduction a path applies to one part's [n, k, *shape] values, in the same order."""
    where = np.empty(n * k, dtype=np.int32)
    where[np.concatenate([p for _, p in parts])] = np.arange(n * k, dtype=np.int32)
    values = mx.concatenate([v.reshape(-1, *shape) for v, _ in parts])
    return values[mx.array(where)].reshape(n, k, *shape).sum(axis=1)


class ExpertPath(Protocol):
    """A way to evaluate a MoE block's router and experts (expert_paths.py)."""

    name: str

    def route(self, logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
        """logits [N, E] -> (expert ids [N, k] uint32 in rank order, float32 weights [N, k])."""
        ...

    def experts(self, x: mx.array, idx: mx.array, w: mx.array, layer: SwitchMXFP4GLU,
                out_dtype: Optional[mx.Dtype] = None) -> mx.array:
        """x [N, H] -> sum_k w[:, k] * expert_{idx[:, k]}(x), [N, H] in `out_dtype` (default x's).

        Every path sums over k in float32; `out_dtype=float32` hands that sum out unrounded (an
        expert-parallel rank's partial sum must not be rounded to bf16 before the ranks add theirs).
        """
        ...
