"""Reading a block of rows of a stored tensor, and nothing else of it, into an MLX array.

`mx.load` is lazy, but evaluating a slice of a lazily loaded tensor reads -- and keeps -- the whole
tensor (the slice is a view of it). An expert-parallel rank must never hold the other ranks' experts,
so it reads its block of each expert tensor by byte range: experts are axis 0 of every expert
tensor, so one rank's block is one contiguous range `offset + first * row_bytes`. The bytes go by
`pread` (the shared reader, `gptoss_metal.architecture.read_into`) straight into a numpy buffer,
which MLX then copies; the buffer is the only transient.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from gptoss_metal.architecture import StoredTensor, read_into

from .errors import ModelLoadError, reported

# SafeTensors dtype -> (numpy dtype the bytes are read as, MLX dtype they are viewed as)
NUMPY_DTYPES = {
    "U8": (np.uint8, None), "U32": (np.uint32, None), "I32": (np.int32, None),
    "F16": (np.float16, None), "F32": (np.float32, None), "BF16": (np.uint16, mx.bfloat16),
}


def rows_buffer(t: StoredTensor, count: int) -> np.ndarray:
    """An uninitialized numpy buffer for `count` rows of a stored tensor (its bytes' own dtype)."""
    if t.spec.dtype not in NUMPY_DTYPES:
        raise ModelLoadError(f"{t.path}: tensor {t.name} has dtype {t.spec.dtype}; rows read by range must be one "
                             f"of {', '.join(NUMPY_DTYPES)}")
    return np.empty((count, *t.spec.shape[1:]), dtype=NUMPY_DTYPES[t.spec.dtype][0])


def as_mlx(t: StoredTensor, buf: np.ndarray) -> mx.array:
    """Rows read into `buf` as the MLX array they are (bf16 viewed from its uint16 bits)."""
    a = mx.array(buf)
    view = NUMPY_DTYPES[t.spec.dtype][1]
    return a.view(view) if view is not None else a


def read_rows(t: StoredTensor, first: int, last: int) -> mx.array:
    """Rows [first, last) along axis 0 of a stored tensor, read by byte range."""
    if not 0 <= first <= last <= t.spec.shape[0]:
        raise ModelLoadError(f"{t.path}: tensor {t.name} has {t.spec.shape[0]} rows, cannot read [{first}, {last})")
    buf = rows_buffer(t, last - first)
    with reported():
        read_into(t, first * t.spec.row_bytes, buf)
    return as_mlx(t, buf)
