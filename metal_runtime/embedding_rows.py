"""The embedding table read on demand: only the rows of the tokens seen are held.

A decoded token needs one row of the embedding (201088 x 2880 in gpt-oss: 1.16 GB in bf16), so a
model that does not fit keeps the table on disk and reads rows by byte range (the shared reader),
keeping the rows of tokens it has seen in a bounded LRU. Values are exactly the loaded table's: the
stored rows converted to the model's dtype as the loader converts the table (a quantized table --
`--quantize-dense` -- is dequantized exactly as MLX's QuantizedEmbedding does).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import mlx.core as mx
import numpy as np

from gptoss_metal.architecture import StoredTensor, read_into

from .errors import reported
from .tensor_rows import as_mlx, rows_buffer

MAX_ROWS = 16384  # rows kept (gpt-oss: ~94 MB in bf16); a conversation uses a few thousand distinct tokens


class OnDemandEmbedding:
    """Stands in for the model's `embed_tokens`: tokens [B, T] -> rows [B, T, H] in the model's dtype.

    `parts`: the stored tensors of the table -- {"weight"} or, quantized, {"weight", "scales", "biases"}
    with `quantization` (group_size, bits, mode) -- and `dtype` what the loader would have cast floats to.
    """

    def __init__(self, parts: dict[str, StoredTensor], dtype: mx.Dtype, quantization: Optional[dict] = None,
                 max_rows: int = MAX_ROWS, on_read=None):
        self.parts, self.dtype, self.quantization = parts, dtype, quantization
        self.max_rows = max_rows
        self.rows: OrderedDict[int, dict[str, mx.array]] = OrderedDict()
        self.on_read = on_read  # called with the bytes of each row read

    def _row(self, token: int) -> dict[str, mx.array]:
        if token in self.rows:
            self.rows.move_to_end(token)
            return self.rows[token]
        row = {}
        for name, t in self.parts.items():
            buf = rows_buffer(t, 1)
            with reported():
                read_into(t, token * t.spec.row_bytes, buf)
            a = as_mlx(t, buf)
            row[name] = a.astype(self.dtype) if a.dtype in (mx.float16, mx.bfloat16, mx.float32) else a
            if self.on_read is not None:
                self.on_read(t.spec.row_bytes)
        mx.eval(*row.values())
        self.rows[token] = row
        if len(self.rows) > self.max_rows:
            self.rows.popitem(last=False)
        return row

    def __call__(self, inputs: mx.array) -> mx.array:
        tokens = np.asarray(inputs)
        unique, inverse = np.unique(tokens, return_inverse=True)
        rows = [self._row(int(t)) for t in unique]
        table = {name: mx.concatenate([r[name] for r in rows]) for name in self.parts}
        where = mx.array(inverse.reshape(tokens.shape).astype(np.uint32))
        if self.quantization is None:
            return table["weight"][where]
        q = self.quantization
        return mx.dequantize(table["weight"][where], scales=table["scales"][where],
                             biases=table["biases"][where] if "biases" in table else None,
                             group_size=q["group_size"], bits=q["bits"], mode=q.get("mode", "affine"))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for row in self.rows.values() for a in row.values())
