"""Streaming SafeTensors reading and writing with bounded memory.

The `safetensors` library loads or saves whole tensors; a 20b checkpoint has single tensors of
hundreds of MB and shards of GB, so both directions here work on byte ranges instead:
- `SafetensorsFile` parses and validates a header and reads byte ranges with `os.pread`
  (no mmap: mapped pages would count against our resident memory).
- `ShardedWriter` plans every output shard up front (headers and offsets are known from the
  tensor specs), pre-sizes the files and accepts chunks in any order with `os.pwrite`.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from gptoss_metal.architecture import CheckpointFolderError, check_weight_files

from .errors import ConversionError

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
MAX_HEADER_BYTES = 100 * 1024 * 1024
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorSpec:
    """Name, SafeTensors dtype string and shape of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class StoredTensor:
    """A tensor inside a file: its spec plus where its bytes are."""

    spec: TensorSpec
    path: Path
    offset: int  # absolute byte offset in the file

    @property
    def name(self) -> str:
        return self.spec.name


class SafetensorsFile:
    """A validated SafeTensors header; byte ranges are read on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ConversionError(f"{self.path}: not a safetensors file (only {size} bytes)")
                (header_len,) = struct.unpack("<Q", head)
                if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                    raise ConversionError(
                        f"{self.path}: corrupt or truncated safetensors file "
                        f"(header claims {header_len} bytes, file has {size})"
                    )
                raw = f.read(header_len)
        except OSError as e:
            raise ConversionError(f"{self.path}: cannot read: {e.strerror or e}") from None
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConversionError(f"{self.path}: corrupt safetensors header (invalid JSON: {e})") from None
        if not isinstance(header, dict):
            raise ConversionError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        self.metadata = header.pop("__metadata__", None) or {}
        data_start = 8 + header_len
        self.tensors: dict[str, StoredTensor] = {}
        spans = []
        for name, info in header.items():
            spec, (begin, end) = _parse_entry(self.path, name, info)
            if end - begin != spec.nbytes:
                raise ConversionError(
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
                raise ConversionError(f"{self.path}: corrupt safetensors file: tensor {name} {what}")
            cursor = end
        if data_start + cursor > size:
            raise ConversionError(
                f"{self.path}: truncated: header declares {cursor} data bytes, "
                f"the file holds {size - data_start}"
            )
        if data_start + cursor < size:
            raise ConversionError(
                f"{self.path}: corrupt safetensors file: {size - data_start - cursor} "
                "unexpected bytes after the last tensor"
            )


def _parse_entry(path: Path, name: str, info: object) -> tuple[TensorSpec, tuple[int, int]]:
    bad = ConversionError(f"{path}: corrupt safetensors header entry for tensor {name}")
    if not isinstance(info, dict):
        raise bad
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise ConversionError(f"{path}: tensor {name}: unknown dtype {dtype!r}")
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


def read_range(tensor: StoredTensor, start: int, length: int) -> bytes:
    """Read `length` bytes of a tensor starting `start` bytes into it."""
    if start < 0 or start + length > tensor.spec.nbytes:
        raise ValueError(f"range {start}+{length} outside tensor {tensor.name}")
    fd = os.open(tensor.path, os.O_RDONLY)
    try:
        parts = []
        got = 0
        while got < length:
            part = os.pread(fd, length - got, tensor.offset + start + got)
            if not part:
                raise ConversionError(f"{tensor.path}: truncated while reading tensor {tensor.name}")
            parts.append(part)
            got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    except OSError as e:
        raise ConversionError(f"{tensor.path}: read error in tensor {tensor.name}: {e.strerror}") from None
    finally:
        os.close(fd)


def collect_tensors(directory: Path) -> dict[str, StoredTensor]:
    """All tensors of a checkpoint folder, following its index when there is one.

    An index that names a missing file or a tensor its file lacks is an error; a tensor stored
    in two files is an error too (the checkpoint would be ambiguous).
    """
    directory = Path(directory)
    index_path = directory / INDEX_NAME
    if index_path.exists():
        try:
            index = json.loads(index_path.read_text())
            weight_map = index["weight_map"]
            assert isinstance(weight_map, dict)
        except (json.JSONDecodeError, KeyError, AssertionError, UnicodeDecodeError):
            raise ConversionError(f"{index_path}: corrupt index (expected a JSON object with weight_map)") from None
        files = sorted(set(weight_map.values()))
        for fname in files:
            if not (directory / fname).is_file():
                raise ConversionError(f"{index_path}: names shard {fname}, which does not exist")
    else:
        weight_map = None
        files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{directory}: no .safetensors files found")
    try:
        check_weight_files(directory, files, from_index=weight_map is not None)
    except CheckpointFolderError as e:
        raise ConversionError(str(e)) from None
    tensors: dict[str, StoredTensor] = {}
    for fname in files:
        sf = SafetensorsFile(directory / fname)
        for name, t in sf.tensors.items():
            if name in tensors:
                raise ConversionError(
                    f"{directory}: tensor {name} is stored twice ({tensors[name].path.name} and {fname})"
                )
            tensors[name] = t
    if weight_map is not None:
        for name, fname in weight_map.items():
            if name not in tensors or tensors[name].path.name != fname:
                raise ConversionError(f"{index_path}: says {name} is in {fname}, but it is not there")
    return tensors


@dataclass
class _Shard:
    path: Path
    tensors: list[TensorSpec] = field(default_factory=list)
    data_start: int = 0
    offsets: dict[str, int] = field(default_factory=dict)  # absolute file offsets


class ShardedWriter:
    """Writes a planned set of tensors into one or more shards, chunk by chunk, in any order.

    `write(name, offset, data)` may be called many times per tensor; `close()` checks every
    byte of every tensor was written exactly once and writes the index (multi-shard only).
    """

    def __init__(
        self,
        directory: Path,
        specs: Sequence[TensorSpec],
        *,
        max_shard_bytes: int = 5 * 10**9,
        single_name: str = "model.safetensors",
        metadata: dict[str, str] | None = None,
        always_index: bool = True,
    ):
        self.directory = Path(directory)
        self.specs = {s.name: s for s in specs}
        if len(self.specs) != len(specs):
            raise ValueError("duplicate tensor names in a write plan")
        groups: list[list[TensorSpec]] = [[]]
        size = 0
        for spec in specs:
            if groups[-1] and size + spec.nbytes > max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(spec)
            size += spec.nbytes
        n = len(groups)
        names = (
            [single_name]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self.shards = [_Shard(self.directory / nm, g) for nm, g in zip(names, groups)]
        self.metadata = {"format": "mlx", **(metadata or {})}
        self.always_index = always_index
        self._where: dict[str, tuple[_Shard, int]] = {}
        self._written: dict[str, int] = {s.name: 0 for s in specs}
        self._fds: dict[Path, int] = {}
        for shard in self.shards:
            self._create(shard)

    def _create(self, shard: _Shard) -> None:
        header: dict[str, object] = {"__metadata__": self.metadata}
        cursor = 0
        for spec in shard.tensors:
            header[spec.name] = {
                "dtype": spec.dtype,
                "shape": list(spec.shape),
                "data_offsets": [cursor, cursor + spec.nbytes],
            }
            shard.offsets[spec.name] = cursor
            cursor += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        shard.data_start = 8 + len(raw)
        fd = os.open(shard.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._fds[shard.path] = fd
        os.pwrite(fd, struct.pack("<Q", len(raw)) + raw, 0)
        os.ftruncate(fd, shard.data_start + cursor)
        for spec in shard.tensors:
            self._where[spec.name] = (shard, shard.data_start + shard.offsets[spec.name])

    def write(self, name: str, offset: int, data: bytes | memoryview) -> None:
        shard, base = self._where[name]
        n = len(data)
        if offset < 0 or offset + n > self.specs[name].nbytes:
            raise ValueError(f"write outside tensor {name}: {offset}+{n} > {self.specs[name].nbytes}")
        fd = self._fds[shard.path]
        view = memoryview(data).cast("B")
        done = 0
        while done < n:
            done += os.pwrite(fd, view[done:], base + offset + done)
        self._written[name] += n

    def close(self) -> list[Path]:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        short = [n for n, w in self._written.items() if w != self.specs[n].nbytes]
        if short:
            raise RuntimeError(f"internal error: tensors not completely written: {short[:5]}")
        if len(self.shards) > 1 or self.always_index:
            index = {
                "metadata": {"total_size": sum(s.nbytes for s in self.specs.values())},
                "weight_map": {
                    spec.name: shard.path.name for shard in self.shards for spec in shard.tensors
                },
            }
            (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return [s.path for s in self.shards]

    def abort(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def iter_chunks(total: int, chunk: int) -> Iterable[tuple[int, int]]:
    """(start, length) pairs covering [0, total) in steps of `chunk`."""
    for start in range(0, total, chunk):
        yield start, min(chunk, total - start)
