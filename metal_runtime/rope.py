"""Rotary embedding with YaRN scaling exactly as openai/gpt-oss computes it.

The NTK-by-parts correction range is used UNROUNDED (low ~8.093, high ~17.398 for gpt-oss);
rounding it to integers (floor/ceil, HF's `truncate: true`) is a known divergence from the
reference. The YaRN concentration 0.1*ln(factor)+1 multiplies cos and sin, which equals scaling
the rotated input by it.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np


def yarn_inv_freq(
    head_dim: int,
    base: float,
    factor: float,
    original_context: int,
    beta_fast: float,
    beta_slow: float,
    truncate: bool = False,
) -> tuple[np.ndarray, float]:
    """(inverse frequencies [head_dim/2] in float64, concentration)."""
    freq = base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if factor <= 1.0:
        return 1.0 / freq, 1.0
    d_half = head_dim / 2
    low = d_half * math.log(original_context / (beta_fast * 2 * math.pi)) / math.log(base)
    high = d_half * math.log(original_context / (beta_slow * 2 * math.pi)) / math.log(base)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    ramp = (np.arange(d_half, dtype=np.float64) - low) / (high - low)
    mask = 1.0 - np.clip(ramp, 0.0, 1.0)
    inv_freq = (1.0 / (factor * freq)) * (1.0 - mask) + (1.0 / freq) * mask
    return inv_freq, 0.1 * math.log(factor) + 1.0


class YarnRope:
    """Applies the rotation to [B, heads, T, head_dim] arrays at a position offset.

    Not an nn.Module on purpose: it holds no parameters (the frequencies are derived).
    """

    def __init__(self, head_dim: int, base: float, factor: float, original_context: int,
                 beta_fast: float, beta_slow: float, truncate: bool = False):
        inv_freq, self.concentration = yarn_inv_freq(
            head_dim, base, factor, original_context, beta_fast, beta_slow, truncate
        )
        self.head_dim = head_dim
        # mx.fast.rope takes periods (angle = position / period)
        self._periods = mx.array((1.0 / inv_freq).astype(np.float32))

    def __call__(self, x: mx.array, offset: int) -> mx.array:
        if self.concentration != 1.0:
            x = x * mx.array(self.concentration, dtype=x.dtype)
        return mx.fast.rope(
            x, self.head_dim, traditional=False, base=None, scale=1.0, offset=offset, freqs=self._periods
        )
