"""Which MLX backend runs the model: Metal (Apple GPU), CUDA, or the CPU."""

from __future__ import annotations

import mlx.core as mx


def backend_name() -> str:
    """"metal", "cuda" or "cpu" for the default device."""
    if mx.default_device().type == mx.DeviceType.cpu:
        return "cpu"
    if mx.metal.is_available():
        return "metal"
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return "cuda"
    return "gpu"
