"""CPU-backend prefill path for the experts: dequantize each used expert once, multiply on host BLAS.

The Linux `mlx[cpu]` wheel multiplies MXFP4 with a scalar loop (~0.2 GMAC/s) and floats with
reference BLAS; numpy's bundled OpenBLAS is ~40x faster for the same float32 product. Dequantizing
an expert costs O(out*in) once per layer call, which many routed tokens amortize. The arithmetic is
float32 throughout (exact dequantization, float32 accumulation), like the MLX twin in float32.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import numpy as np
from threadpoolctl import ThreadpoolController

from .experts import MXFP4Projection, Pairs, SwitchMXFP4GLU, swiglu

_FP4 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)
# byte -> (value of low nibble, value of high nibble): the element pair a byte packs
_PAIRS = np.stack([_FP4[np.arange(256) & 15], _FP4[np.arange(256) >> 4]], axis=-1)


# One BLAS thread: MLX's own CPU threads run beside numpy, and OpenBLAS's spinning threads collapse
# (30x slower measured) when the cores are oversubscribed.
_BLAS = ThreadpoolController()

ROW_BLOCK = 256  # output rows dequantized at a time: bounds the float32 copy (~3 MB at H = 2880)


def dequantize_rows(words: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Float32 [rows, in] from MXFP4 words [rows, in/8] and E8M0 scales [rows, in/32] (bit-exact)."""
    rows, n_groups = scales.shape
    vals = _PAIRS[words.view(np.uint8)].reshape(rows, n_groups, 32)
    vals *= np.ldexp(np.float32(1.0), scales.astype(np.int32) - 127)[..., None]
    return vals.reshape(rows, n_groups * 32)


def matmul_expert(h: np.ndarray, proj: MXFP4Projection, e: int) -> np.ndarray:
    """h [t, in] @ W_e^T + b_e, dequantizing W_e block by block (peak memory stays small)."""
    words = np.asarray(proj.weight[e])
    scales = np.asarray(proj.scales[e])
    out = np.empty((h.shape[0], words.shape[0]), dtype=np.float32)
    for r0 in range(0, words.shape[0], ROW_BLOCK):
        r1 = min(r0 + ROW_BLOCK, words.shape[0])
        out[:, r0:r1] = h @ dequantize_rows(words[r0:r1], scales[r0:r1]).T
    out += _bias(proj, e)
    return out


def _bias(proj: MXFP4Projection, e: int) -> np.ndarray:
    return np.asarray(proj.bias[e].astype(mx.float32))


def host_experts(x: mx.array, idx: mx.array, weights: mx.array, experts: SwitchMXFP4GLU,
                 out_dtype: Optional[mx.Dtype] = None) -> mx.array:
    with _BLAS.limit(limits=1, user_api="blas"):
        return _host_experts(x, idx, weights, experts).astype(out_dtype or x.dtype)


def _host_experts(x: mx.array, idx: mx.array, weights: mx.array, experts: SwitchMXFP4GLU) -> mx.array:
    """The float32 sum over each token's experts, added expert by expert in ascending id order.

    A cached layer hands its experts over in parts (ascending ids, experts.py); the sums run on across
    the parts, so they are added in the same order as from a layer held whole.
    """
    xs = np.asarray(x.astype(mx.float32))
    ws = np.asarray(weights.astype(mx.float32))
    out = np.zeros_like(xs)
    k = idx.shape[1]

    def run(m: SwitchMXFP4GLU, ids: mx.array, pairs: Pairs) -> None:
        held = np.asarray(ids)
        for e in np.unique(held):
            if pairs is None:
                rows, slots = np.nonzero(held == e)
            else:
                rows, slots = np.divmod(pairs[held == e], k)
            h = xs[rows]
            g = matmul_expert(h, m.gate_proj, int(e))
            u = matmul_expert(h, m.up_proj, int(e))
            a = np.asarray(swiglu(mx.array(g), mx.array(u), m.limit, m.alpha))
            d = matmul_expert(a, m.down_proj, int(e))
            np.add.at(out, rows, d * ws[rows, slots][:, None])

    experts.map_segments(idx, run)
    return mx.array(out)
