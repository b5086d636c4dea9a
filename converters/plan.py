"""How each source tensor becomes runtime-layout tensors, as byte-level transfers.

Every transfer reads one source tensor in bounded chunks and writes byte ranges of one or more
output tensors. MXFP4 data is never decoded: a 16-byte block (low nibble = even element) read as
four little-endian uint32 words is exactly MLX's mxfp4 packing, so blocks are copied verbatim and
only their dtype/shape metadata changes. The interleaved ``mlp1``/``gate_up_proj`` rows (even =
gate, odd = up) are split by row parity.

Content checks run on the chunks as they stream: E8M0 scale byte 0xFF (NaN) and non-finite dense
values are errors naming file and tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from gptoss_metal.architecture import StoredTensor, TensorSpec

from .errors import ConversionError
from .layouts import DEINTERLEAVE, FLOAT, ROWS, Expected
from .safetensors_io import iter_chunks, read_range

CHUNK_BYTES = 32 * 1024 * 1024

# A write request: (output tensor name, byte offset inside it, bytes)
Write = tuple[str, int, bytes]


@dataclass(frozen=True)
class Transfer:
    """One source tensor -> output tensors. `kind` picks the byte transform."""

    source: StoredTensor
    role: str  # content check: "dense" | "blocks" | "scales" | "qweight" | "qparams"
    kind: str  # "copy" | "deinterleave" | "quantize"
    outputs: tuple[TensorSpec, ...]
    quant_bits: int = 0

    @property
    def read_bytes(self) -> int:
        return self.source.spec.nbytes


# -- content checks ----------------------------------------------------------------------


def _nonfinite_count(raw: bytes, dtype: str) -> int:
    if dtype == "BF16":
        u = np.frombuffer(raw, dtype="<u2")
        return int(np.count_nonzero((u & 0x7F80) == 0x7F80))
    if dtype == "F16":
        u = np.frombuffer(raw, dtype="<u2")
        return int(np.count_nonzero((u & 0x7C00) == 0x7C00))
    if dtype == "F32":
        u = np.frombuffer(raw, dtype="<u4")
        return int(np.count_nonzero((u & 0x7F800000) == 0x7F800000))
    if dtype == "F64":
        return int(np.count_nonzero(~np.isfinite(np.frombuffer(raw, dtype="<f8"))))
    return 0


def check_chunk(t: StoredTensor, role: str, raw: bytes) -> None:
    if role in ("dense", "qparams"):
        bad = _nonfinite_count(raw, t.spec.dtype)
        if bad:
            raise ConversionError(f"{t.path}: tensor {t.name} holds {bad} non-finite values (NaN/Inf)")
    elif role == "scales":
        bad = int(np.count_nonzero(np.frombuffer(raw, dtype=np.uint8) == 0xFF))
        if bad:
            raise ConversionError(
                f"{t.path}: tensor {t.name} holds {bad} MXFP4 scale bytes 0xFF (E8M0 NaN)"
            )


# -- byte transforms ---------------------------------------------------------------------


def _run_copy(tr: Transfer, check: Callable[[bytes], None]) -> Iterator[Write]:
    (out,) = tr.outputs
    for start, n in iter_chunks(tr.source.spec.nbytes, CHUNK_BYTES):
        raw = read_range(tr.source, start, n)
        check(raw)
        yield out.name, start, raw


def _run_deinterleave(tr: Transfer, check: Callable[[bytes], None]) -> Iterator[Write]:
    """Source rows alternate even/odd along axis 1: even rows -> outputs[0], odd -> outputs[1]."""
    even, odd = tr.outputs
    shape = tr.source.spec.shape
    n_experts, n_rows = shape[0], shape[1]
    row_bytes = tr.source.spec.nbytes // (n_experts * n_rows)
    pair_bytes = 2 * row_bytes
    n_pairs = n_experts * n_rows // 2
    pairs_per_chunk = max(1, CHUNK_BYTES // pair_bytes)
    for first in range(0, n_pairs, pairs_per_chunk):
        count = min(pairs_per_chunk, n_pairs - first)
        raw = read_range(tr.source, first * pair_bytes, count * pair_bytes)
        check(raw)
        arr = np.frombuffer(raw, dtype=np.uint8).reshape(count, 2, row_bytes)
        yield even.name, first * row_bytes, np.ascontiguousarray(arr[:, 0]).tobytes()
        yield odd.name, first * row_bytes, np.ascontiguousarray(arr[:, 1]).tobytes()


def _run_quantize(tr: Transfer, check: Callable[[bytes], None]) -> Iterator[Write]:
    """Affine-quantize a float matrix by row chunks with MLX (groups never cross rows)."""
    from .quantize import quantize_rows

    weight, scales, biases = tr.outputs
    rows, cols = tr.source.spec.shape
    itemsize = tr.source.spec.nbytes // (rows * cols)
    rows_per_chunk = max(1, CHUNK_BYTES // (cols * itemsize))
    w_row, s_row = weight.nbytes // rows, scales.nbytes // rows
    for r0 in range(0, rows, rows_per_chunk):
        n = min(rows_per_chunk, rows - r0)
        raw = read_range(tr.source, r0 * cols * itemsize, n * cols * itemsize)
        check(raw)
        w, s, b = quantize_rows(raw, tr.source.spec.dtype, n, cols, tr.quant_bits)
        yield weight.name, r0 * w_row, w
        yield scales.name, r0 * s_row, s
        yield biases.name, r0 * s_row, b


_RUNNERS = {
    "copy": _run_copy,
    "deinterleave": _run_deinterleave,
    "quantize": _run_quantize,
}


def run_transfer(tr: Transfer) -> Iterator[Write]:
    return _RUNNERS[tr.kind](tr, lambda raw: check_chunk(tr.source, tr.role, raw))


# -- planning ----------------------------------------------------------------------------
#
# The plan is derived from the source layout's table (layouts.py): each row names the runtime
# tensors it becomes and how; the runtime table says what those look like.


def _output(name: str, src: StoredTensor, runtime: dict[str, Expected]) -> TensorSpec:
    """The spec a runtime tensor is written with: the runtime table's, a float keeping the source's dtype."""
    want = runtime[name]
    return TensorSpec(name, src.spec.dtype if want.dtype == FLOAT else want.dtype, want.shape)


def _dense(src: StoredTensor, out_name: str, quant: dict[str, int], runtime: dict[str, Expected]) -> Transfer:
    """A float tensor copied as is, or affine-quantized when its module is in `quant`."""
    module = out_name.rsplit(".", 1)[0]
    bits = quant.get(module)
    if bits and out_name.endswith(".weight"):
        outputs = tuple(_output(f"{module}.{part}", src, runtime) for part in ("weight", "scales", "biases"))
        return Transfer(src, "dense", "quantize", outputs, quant_bits=bits)
    return Transfer(src, "dense", "copy", (_output(out_name, src, runtime),))


def _row_views(src: StoredTensor, row_counts: tuple[int, ...]) -> list[StoredTensor]:
    """Consecutive row ranges of a row-major tensor, each itself a contiguous tensor.

    The views keep the source's name (with the row range) so errors point at the real tensor.
    """
    views, row = [], 0
    for count in row_counts:
        spec = TensorSpec(f"{src.name}[rows {row}:{row + count}]", src.spec.dtype, (count, *src.spec.shape[1:]))
        views.append(StoredTensor(spec, src.path, src.rows_offset(row)))
        row += count
    return views


def _transfers(row: Expected, src: StoredTensor, quant: dict[str, int], runtime: dict[str, Expected]) -> list[Transfer]:
    if row.how == DEINTERLEAVE:
        return [Transfer(src, row.role, "deinterleave", tuple(_output(t, src, runtime) for t in row.targets))]
    if row.how == ROWS:
        views = _row_views(src, tuple(runtime[t].shape[0] for t in row.targets))
        return [_dense(view, target, quant, runtime) for view, target in zip(views, row.targets)]
    (target,) = row.outputs
    if row.role == "dense":
        return [_dense(src, target, quant, runtime)]
    return [Transfer(src, row.role, "copy", (_output(target, src, runtime),))]


def plan_conversion(
    table: list[Expected], runtime: list[Expected], srcs: dict[str, StoredTensor], quant: dict[str, int]
) -> list[Transfer]:
    """Transfers turning the tensors of a source layout (`table`, found in `srcs`) into the runtime
    layout (`runtime`: its table with the quantization the output will have), quantizing `quant`'s
    modules to their bits on the way."""
    out = {row.name: row for row in runtime}
    return [tr for row in table for tr in _transfers(row, srcs[row.name], quant, out)]
