"""The mixture-of-experts block: a router (top-k, then softmax over those k) and MXFP4 SwiGLU experts.

The experts' weights (experts.py) are never dequantized as a whole. *How* they are evaluated --
Metal kernels, the fast MLX path, the host BLAS path for CPU prefill, or the float32 twins that
define the kernels -- is an `ExpertPath` (expert_paths.py) chosen once per model and handed to
every block.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from .experts import ExpertPath, SwitchMXFP4GLU


class MLPBlock(nn.Module):
    """Router + experts of one transformer layer."""

    def __init__(self, hidden: int, intermediate: int, num_experts: int, experts_per_token: int,
                 limit: float, alpha: float, path: ExpertPath):
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
