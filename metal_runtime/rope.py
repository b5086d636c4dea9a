"""Rotary embedding with YaRN scaling exactly as openai/gpt-oss computes it.

The NTK-by-parts correction range comes from `Architecture.yarn_correction_range` (unrounded,
~8.093 to ~17.398 for gpt-oss; rounding it is a known divergence elsewhere). The YaRN
concentration 0.1*ln(factor)+1 multiplies cos and sin; since it scales both queries and keys, the
attention applies it as concentration^2 in its softmax scale (model.py) instead of two multiplies.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from gptoss_metal.architecture import Architecture


def yarn_inv_freq(arch: Architecture) -> np.ndarray:
    """Inverse frequencies [head_dim/2] in float64."""
    freq = arch.rope_theta ** (np.arange(0, arch.head_dim, 2, dtype=np.float64) / arch.head_dim)
    if arch.rope_factor <= 1.0:
        return 1.0 / freq
    low, high = arch.yarn_correction_range()
    ramp = (np.arange(arch.head_dim / 2, dtype=np.float64) - low) / (high - low)
    mask = 1.0 - np.clip(ramp, 0.0, 1.0)
    return (1.0 / (arch.rope_factor * freq)) * (1.0 - mask) + (1.0 / freq) * mask


class YarnRope:
    """Applies the rotation to [B, heads, T, head_dim] arrays at a position offset.

    Not an nn.Module on purpose: it holds no parameters (the frequencies are derived).
    """

    def __init__(self, arch: Architecture):
        self.head_dim = arch.head_dim
        # mx.fast.rope takes periods (angle = position / period)
        self._periods = mx.array((1.0 / yarn_inv_freq(arch)).astype(np.float32))

    def __call__(self, x: mx.array, offset: int) -> mx.array:
        """The rotation without the concentration (the attention scale carries it)."""
        return mx.fast.rope(
            x, self.head_dim, traditional=False, base=None, scale=1.0, offset=offset, freqs=self._periods
        )
