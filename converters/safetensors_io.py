"""Streaming SafeTensors writing with bounded memory, and the converter's view of the shared reader.

The `safetensors` library loads or saves whole tensors; a 20b checkpoint has single tensors of
hundreds of MB and shards of GB, so both directions work on byte ranges instead:
- reading is the shared, validating reader (`gptoss_metal.architecture.tensor_files`), its errors
  reported as `ConversionError`s here;
- `ShardedWriter` plans every output shard up front (headers and offsets are known from the
  tensor specs), pre-sizes the files and accepts chunks in any order with `os.pwrite`.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from gptoss_metal.architecture import INDEX_NAME, StoredTensor, TensorSpec, read_bytes
from gptoss_metal.architecture import collect_tensors as _collect_tensors

from .errors import reported


def read_range(tensor: StoredTensor, start: int, length: int) -> bytearray:
    """Read `length` bytes of a tensor starting `start` bytes into it (the shared reader, our errors)."""
    with reported():
        return read_bytes(tensor, start, length)


def collect_tensors(directory: Path) -> dict[str, StoredTensor]:
    """All tensors of a checkpoint folder (the shared reader, our errors)."""
    with reported():
        return _collect_tensors(directory)


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
