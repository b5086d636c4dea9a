"""Independent test helpers: reading checkpoints and decoding MXFP4 without project code.

Tensors are read with MLX's own safetensors loader (not our reader) and MXFP4 is decoded from
the OCP MX definition (FP4 E2M1 code table, E8M0 scale = 2**(byte - 127)), so a bug in the
converters cannot hide behind a matching bug here.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import mlx.core as mx
import numpy as np

FP4_TABLE = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float64,
)


def to_numpy(a: mx.array) -> np.ndarray:
    if a.dtype in (mx.bfloat16, mx.float16):
        a = a.astype(mx.float32)
    return np.array(a)


def load_tensors(directory: Path | str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for f in sorted(glob.glob(os.path.join(str(directory), "*.safetensors"))):
        for k, v in mx.load(f).items():
            out[k] = to_numpy(v)
    return out


def decode_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """uint8 blocks [..., nb, 16] (low nibble = even element) + E8M0 scales [..., nb] -> float64 [..., nb*32]."""
    lo, hi = blocks & 0x0F, blocks >> 4
    codes = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], 32)
    vals = FP4_TABLE[codes] * np.ldexp(1.0, scales.astype(np.int64) - 127)[..., None]
    return vals.reshape(*blocks.shape[:-2], blocks.shape[-2] * 32)


def u32_words_to_blocks(words: np.ndarray) -> np.ndarray:
    """uint32 [..., n*4] (MLX packing) -> the uint8 [..., n, 16] blocks it reinterprets."""
    b = np.ascontiguousarray(words).astype("<u4").view(np.uint8)
    return b.reshape(*words.shape[:-1], words.shape[-1] // 4, 16)
