"""The mixture-of-experts block: a router (top-k, then softmax over those k) and MXFP4 SwiGLU experts.

Experts are stored in the runtime layout (uint32 MXFP4 words, uint8 E8M0 scales, float biases) and
never dequantized as a whole. *How* they are evaluated -- Metal kernels, the fast MLX path, the host
BLAS path for CPU prefill, or the float32 twins that define the kernels -- is an `ExpertPath`
(expert_paths.py) chosen once per model and handed to every block.

The expert set is a parameter (`num_experts` of this block), not a constant: an expert-parallel
rank holds a slice of the experts of every layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import mlx.core as mx
import mlx.nn as nn

from gptoss_metal.architecture import MXFP4_GROUP

if TYPE_CHECKING:
    from .expert_paths import ExpertPath


def swiglu(gate: mx.array, up: mx.array, limit: float, alpha: float) -> mx.array:
    """gpt-oss's clamped SwiGLU: min(g, limit) * sigmoid(alpha * g) * (clip(u, -limit, limit) + 1).

    The one definition of the activation in MLX (the Metal kernel computes the same in MSL).
    """
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


class MLPBlock(nn.Module):
    """Router + experts of one transformer layer."""

    def __init__(self, hidden: int, intermediate: int, num_experts: int, experts_per_token: int,
                 limit: float, alpha: float, path: "ExpertPath"):
        super().__init__()
        self.experts_per_token = experts_per_token
        self.router = nn.Linear(hidden, num_experts, bias=True)
        self.experts = SwitchMXFP4GLU(num_experts, hidden, intermediate, limit, alpha)
        self.path = path

    def __call__(self, x: mx.array, out_dtype: Optional[mx.Dtype] = None) -> mx.array:
        """`out_dtype` float32 hands out the k-expert sum unrounded (the block rounds it in its residual add)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        idx, w = self.path.route(self.router(flat), self.experts_per_token)
        return self.path.experts(flat, idx, w, self.experts, out_dtype).reshape(shape)
