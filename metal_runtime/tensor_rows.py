"""Reading a block of rows of a stored tensor, and nothing else of it (expert-parallel loading).

`mx.load` is lazy, but evaluating a slice of a lazily loaded tensor reads -- and keeps -- the whole
tensor (the slice is a view of it). An expert-parallel rank must never hold the other ranks' experts,
so it reads its block of each expert tensor by byte range: experts are axis 0 of every expert
tensor, so one rank's block is one contiguous range `offset + first * row_bytes`. The read goes
through an unbuffered `readinto` of a numpy buffer (no mmap: mapped pages would count as resident memory),
which MLX then copies; the buffer is the only transient.

Only the SafeTensors header is parsed here (the converters own full validation of files).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import mlx.core as mx
import numpy as np

from .errors import ModelLoadError

# SafeTensors dtype -> (numpy dtype the bytes are read as, MLX dtype they are viewed as)
_DTYPES = {
    "U8": (np.uint8, None), "U32": (np.uint32, None), "I32": (np.int32, None),
    "F16": (np.float16, None), "F32": (np.float32, None), "BF16": (np.uint16, mx.bfloat16),
}
_SIZES = {"U8": 1, "U32": 4, "I32": 4, "F16": 2, "F32": 4, "BF16": 2}


@dataclass(frozen=True)
class StoredRows:
    """Where a tensor's bytes are: file, absolute offset, dtype string, shape."""

    name: str
    path: Path
    offset: int
    dtype: str
    shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * _SIZES[self.dtype]


def stored_tensors(paths: Iterable[Path]) -> dict[str, StoredRows]:
    """Name -> location of every tensor in these SafeTensors files (headers only)."""
    out: dict[str, StoredRows] = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, struct.error, ValueError) as e:
            raise ModelLoadError(f"{path}: cannot read its safetensors header ({e})") from None
        header.pop("__metadata__", None)
        for name, info in header.items():
            begin, _ = info["data_offsets"]
            out[name] = StoredRows(name, Path(path), 8 + n + begin, info["dtype"], tuple(info["shape"]))
    return out


def read_rows(t: StoredRows, first: int, last: int) -> mx.array:
    """Rows [first, last) along axis 0 of a stored tensor, read by byte range."""
    if t.dtype not in _DTYPES:
        raise ModelLoadError(f"{t.path}: tensor {t.name} has dtype {t.dtype}; expert rows must be one of "
                             f"{', '.join(_DTYPES)}")
    if not 0 <= first <= last <= t.shape[0]:
        raise ModelLoadError(f"{t.path}: tensor {t.name} has {t.shape[0]} rows, cannot read [{first}, {last})")
    np_dtype, view = _DTYPES[t.dtype]
    buf = np.empty((last - first, *t.shape[1:]), dtype=np_dtype)
    data = memoryview(buf).cast("B")
    with open(t.path, "rb", buffering=0) as f:  # unbuffered: readinto fills `buf` with no extra copy
        f.seek(t.offset + first * t.row_bytes)
        got = 0
        while got < len(data):
            n = f.readinto(data[got:])
            if not n:
                raise ModelLoadError(f"{t.path}: truncated while reading tensor {t.name}")
            got += n
    a = mx.array(buf)
    return a.view(view) if view is not None else a
