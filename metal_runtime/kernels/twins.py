"""MLX-op twins of the Metal kernels: the same results, computed with ordinary MLX operations.

They define what the kernels must compute (the tests compare kernels against them, and `TwinPath`
runs them as an expert path). Arithmetic is float32 inside, like the kernels.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

from gptoss_metal.architecture import MXFP4_GROUP as GROUP

from ..experts import MXFP4Projection, SwitchMXFP4GLU, swiglu


def route_twin(logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """Top-k ids (ties -> lower id, rank order) and softmax over the k logits. logits [N, E]."""
    lg = logits.astype(mx.float32)
    n_experts = lg.shape[-1]
    ids = mx.arange(n_experts)
    a = lg[..., :, None]  # the expert being ranked
    b = lg[..., None, :]  # its competitors
    beats = (b > a) | ((b == a) & (ids[None, :] < ids[:, None]))
    rank = beats.sum(axis=-1)  # [N, E]: how many experts come before this one
    sel = mx.argmax(rank[..., None, :] == mx.arange(k)[:, None], axis=-1).astype(mx.uint32)  # [N, k]
    vals = mx.take_along_axis(lg, sel, axis=-1)
    return sel, mx.softmax(vals, axis=-1, precise=True)


def _gather_f32(x: mx.array, weight: mx.array, scales: mx.array, idx: mx.array) -> mx.array:
    return mx.gather_qmm(x, weight, scales, None, rhs_indices=idx, transpose=True, group_size=GROUP, bits=4,
                         mode="mxfp4")


def experts_up_twin(x: mx.array, idx: mx.array, gate: MXFP4Projection, up: MXFP4Projection, limit: float,
                    alpha: float) -> mx.array:
    """act [N, k, I] (float32) = swiglu(gate_e x + b, up_e x + b) for each token and its k experts."""
    xf = x.astype(mx.float32)[:, None, None, :]
    g = _gather_f32(xf, gate.weight, gate.scales, idx).squeeze(-2) + gate.bias[idx].astype(mx.float32)
    u = _gather_f32(xf, up.weight, up.scales, idx).squeeze(-2) + up.bias[idx].astype(mx.float32)
    return swiglu(g, u, limit, alpha)


def weighted_down_twin(act: mx.array, idx: mx.array, weights: mx.array, down: MXFP4Projection) -> mx.array:
    """[N, k, H] (float32): weights[:, k] * (down_e act[:, k] + b_e), each token's k terms before their sum."""
    d = _gather_f32(act[:, :, None, :], down.weight, down.scales, idx).squeeze(-2)
    d = d + down.bias[idx].astype(mx.float32)
    return d * weights.astype(mx.float32)[..., None]


def experts_down_twin(act: mx.array, idx: mx.array, weights: mx.array, down: MXFP4Projection,
                      out_dtype: mx.Dtype) -> mx.array:
    """y [N, H] = sum_k weights[:, k] * (down_e act[:, k] + b_e), in `out_dtype`."""
    return weighted_down_twin(act, idx, weights, down).sum(axis=1).astype(out_dtype)


def twin_experts(x: mx.array, idx: mx.array, w: mx.array, m: SwitchMXFP4GLU,
                 out_dtype: Optional[mx.Dtype] = None) -> mx.array:
    """The whole expert computation of the twins: up (with SwiGLU), then down and the weighted sum."""
    act = experts_up_twin(x, idx, m.gate_proj, m.up_proj, m.limit, m.alpha)
    return experts_down_twin(act, idx, w, m.down_proj, out_dtype or x.dtype)
