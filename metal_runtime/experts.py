"""What every way of running a MoE layer's experts shares: the weights, the activation, the protocol.

A leaf of the expert path: the twins, the host path, the kernels, the expert paths and the MoE block
all import it, and it imports none of them. It holds
- the weight containers: `MXFP4Projection` (one projection of all experts, in the runtime layout:
  uint32 MXFP4 words, uint8 E8M0 scales, float biases) and `SwitchMXFP4GLU` (gate, up and down of
  all experts of one layer, never dequantized as a whole);
- `swiglu`, gpt-oss's clamped activation, the one MLX definition of it (the Metal kernel computes
  the same in MSL);
- `ExpertPath`, the protocol of a way to evaluate the router and experts (expert_paths.py holds the
  ways and the policy choosing one).

The expert set is a parameter (`num_experts` of a container), not a constant: an expert-parallel
rank holds a slice of the experts of every layer.
"""

from __future__ import annotations

from typing import Optional, Protocol

import mlx.core as mx
import mlx.nn as nn

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
