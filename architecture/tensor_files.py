"""SafeTensors headers, validated, and byte ranges of the tensors they describe.

The one reader of checkpoint files for both sides of the converters/runtime wall: the converter
streams tensors through it, the loader finds expert rows with it (an expert-parallel rank's block,
the expert cache's misses, embedding rows read on demand). A 20b checkpoint has single tensors of
hundreds of MB, so nothing here reads a whole tensor: `read_into` fills a caller's buffer from a
byte range with `pread` (no mmap: mapped pages would count against resident memory, and a cache
that owns its buffers decides what stays).

Every header is validated before anything trusts it: offsets inside the file, no overlaps or holes,
sizes matching dtype x shape, the index and the files agreeing.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .errors import CheckpointError
from .folders import check_weight_files

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
MAX_HEADER_BYTES = 100 * 1024 * 1024
INDEX_NAME = "model.safetensors.index.json"

Buffer = Union[bytearray, memoryview]


@dataclass(frozen=True)
class TensorSpec:
    """Name, SafeTensors dtype string and shape of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]

    @property
    def row_bytes(self) -> int:
        """Bytes of one index along axis 0 (one expert of an expert tensor, one row of a matrix)."""
        return math.prod(self.shape[1:]) * DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class StoredTensor:
    """A tensor inside a file: its spec plus where its bytes are."""

    spec: TensorSpec
    path: Path
    offset: int  # absolute byte offset in the file

    @property
    def name(self) -> str:
        return self.spec.name

    def rows_offset(self, first: int) -> int:
        """Absolute file offset of row `first` along axis 0."""
        return self.offset + first * self.spec.row_bytes


class SafetensorsFile:
    """A validated SafeTensors header; byte ranges are read on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: not a safetensors file (only {size} bytes)")
                (header_len,) = struct.unpack("<Q", head)
                if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                    raise CheckpointError(
                        f"{self.path}: corrupt or truncated safetensors file "
                        f"(header claims {header_len} bytes, file has {size})"
                    )
                raw = f.read(header_len)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read: {e.strerror or e}") from None
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: corrupt safetensors header (invalid JSON: {e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        self.metadata = header.pop("__metadata__", None) or {}
        data_start = 8 + header_len
        self.tensors: dict[str, StoredTensor] = {}
        spans = []
        for name, info in header.items():
            spec, (begin, end) = _parse_entry(self.path, name, info)
            if end - begin != spec.nbytes:
                raise CheckpointError(
                    f"{self.path}: tensor {name}: byte range {begin}..{end} does not hold "
                    f"{spec.dtype}{list(spec.shape)} ({spec.nbytes} bytes)"
                )
            spans.append((begin, end, name))
            self.tensors[name] = StoredTensor(spec, self.path, data_start + begin)
        spans.sort()
        cursor = 0
        for begin, end, name in spans:
            if begin != cursor:
                what = "overlaps another tensor" if begin < cursor else "leaves a hole before it"
                raise CheckpointError(f"{self.path}: corrupt safetensors file: tensor {name} {what}")
            cursor = end
        if data_start + cursor > size:
            raise CheckpointError(
                f"{self.path}: truncated: header declares {cursor} data bytes, "
                f"the file holds {size - data_start}"
            )
        if data_start + cursor < size:
            raise CheckpointError(
                f"{self.path}: corrupt safetensors file: {size - data_start - cursor} "
                "unexpected bytes after the last tensor"
            )


def _parse_entry(path: Path, name: str, info: object) -> tuple[TensorSpec, tuple[int, int]]:
    bad = CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name}")
    if not isinstance(info, dict):
        raise bad
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{path}: tensor {name}: unknown dtype {dtype!r}")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and d >= 0 for d in shape)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise bad
    return TensorSpec(name, dtype, tuple(shape)), (offsets[0], offsets[1])


# -- byte ranges ------------------------------------------------------------------------------


def read_into(tensor: StoredTensor, start: int, buffer: Buffer, fd: Optional[int] = None) -> None:
    """Fill `buffer` with the tensor's bytes from `start` (bytes into the tensor), by `pread`.

    `fd`: an open descriptor of the tensor's file (callers reading often keep theirs); else one is
    opened for this read. The buffer is written in place: no intermediate copy.
    """
    view = memoryview(buffer).cast("B")
    length = len(view)
    if start < 0 or start + length > tensor.spec.nbytes:
        raise ValueError(f"range {start}+{length} outside tensor {tensor.name}")
    own = fd is None
    try:
        if own:
            fd = os.open(tensor.path, os.O_RDONLY)
        got = 0
        while got < length:
            n = _pread_into(fd, view[got:], tensor.offset + start + got)
            if not n:
                raise CheckpointError(f"{tensor.path}: truncated while reading tensor {tensor.name}")
            got += n
    except OSError as e:
        raise CheckpointError(f"{tensor.path}: read error in tensor {tensor.name}: {e.strerror or e}") from None
    finally:
        if own and fd is not None:
            os.close(fd)


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)  # platforms without preadv: one extra copy
    view[: len(data)] = data
    return len(data)


def read_bytes(tensor: StoredTensor, start: int, length: int) -> bytearray:
    """`length` bytes of a tensor starting `start` bytes into it."""
    buf = bytearray(length)
    read_into(tensor, start, buf)
    return buf


# -- a folder's tensors -------------------------------------------------------------------------


def weight_files(directory: Path) -> tuple[list[str], Optional[dict[str, str]]]:
    """The weight files of a checkpoint folder and its index's weight map (None without an index).

    The files are one complete set inside the folder (`folders.check_weight_files`); an index that
    is not JSON or names a missing file is an error.
    """
    directory = Path(directory)
    index_path = directory / INDEX_NAME
    weight_map: Optional[dict[str, str]] = None
    if index_path.exists():
        try:
            index = json.loads(index_path.read_text())
            weight_map = index["weight_map"]
            assert isinstance(weight_map, dict)
        except (json.JSONDecodeError, KeyError, AssertionError, UnicodeDecodeError, TypeError):
            raise CheckpointError(f"{index_path}: corrupt index (expected a JSON object with weight_map)") from None
        files = sorted(set(weight_map.values()))
        for fname in files:
            if not (directory / fname).is_file():
                raise CheckpointError(f"{index_path}: names shard {fname}, which does not exist")
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no .safetensors files found")
    check_weight_files(directory, files, from_index=weight_map is not None)
    return files, weight_map


def collect_tensors(directory: Path) -> dict[str, StoredTensor]:
    """All tensors of a checkpoint folder, following its index when there is one.

    An index that names a missing file or a tensor its file lacks is an error; a tensor stored
    in two files is an error too (the checkpoint would be ambiguous).
    """
    directory = Path(directory)
    files, weight_map = weight_files(directory)
    tensors: dict[str, StoredTensor] = {}
    for fname in files:
        sf = SafetensorsFile(directory / fname)
        for name, t in sf.tensors.items():
            if name in tensors:
                raise CheckpointError(
                    f"{directory}: tensor {name} is stored twice ({tensors[name].path.name} and {fname})"
                )
            tensors[name] = t
    if weight_map is not None:
        for name, fname in weight_map.items():
            if name not in tensors or tensors[name].path.name != fname:
                raise CheckpointError(f"{directory / INDEX_NAME}: says {name} is in {fname}, but it is not there")
    return tensors
