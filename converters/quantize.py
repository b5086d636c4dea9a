"""Affine quantization of dense matrices (``--quantize-dense``), done by MLX itself.

The runtime and mlx-lm dequantize with MLX's own affine scheme, so the quantizer must be MLX's
`mx.quantize` bit for bit; re-implementing it would risk off-by-one rounding differences. MLX is
imported lazily so that plain conversions never pay for it.
"""

from __future__ import annotations

import numpy as np

from .layouts import DENSE_QUANT_GROUP

_MX_FROM_NUMPY_BITS = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def quantize_rows(raw: bytes, dtype: str, rows: int, cols: int, bits: int) -> tuple[bytes, bytes, bytes]:
    """Quantize a [rows, cols] chunk; returns (uint32 weight, scales, biases) bytes.

    Scales and biases keep the source dtype, as MLX produces them for that input dtype.
    """
    import mlx.core as mx

    if dtype == "BF16":
        x = mx.array(np.frombuffer(raw, dtype="<u2").reshape(rows, cols)).view(mx.bfloat16)
    elif dtype == "F16":
        x = mx.array(np.frombuffer(raw, dtype="<f2").reshape(rows, cols))
    elif dtype == "F32":
        x = mx.array(np.frombuffer(raw, dtype="<f4").reshape(rows, cols))
    else:
        raise ValueError(f"cannot quantize dtype {dtype}")
    w, s, b = mx.quantize(x, group_size=DENSE_QUANT_GROUP, bits=bits, mode="affine")
    as_bytes = lambda a: np.array(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a).tobytes()  # noqa: E731
    return np.array(w).tobytes(), as_bytes(s), as_bytes(b)
