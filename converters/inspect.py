"""`gptoss inspect`: what a checkpoint holds, how big it is, and what one decoded token reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gptoss_metal.architecture import (
    Architecture,
    ParameterCounts,
    bytes_per_decoded_token,
    is_expert_tensor,
    quantization_overrides,
)

from .checkpoint import Checkpoint, open_checkpoint

@dataclass
class CheckpointSummary:
    directory: Path
    layout: str
    arch: Architecture
    files: dict[str, int] = field(default_factory=dict)  # file name -> bytes on disk
    tensor_bytes: int = 0
    expert_bytes: int = 0  # of tensor_bytes: the experts (what expert-parallel ranks split)
    params: ParameterCounts | None = None
    bytes_per_token: int = 0  # weights read per decoded token (without the KV cache)
    dense_quantization: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "directory": str(self.directory),
            "layout": self.layout,
            "config": self.arch.to_dict(),
            "files": self.files,
            "tensor_bytes": self.tensor_bytes,
            "expert_bytes": self.expert_bytes,
            "parameters": vars(self.params) if self.params else None,
            "bytes_per_decoded_token": self.bytes_per_token,
            "dense_quantization": self.dense_quantization,
        }


def checkpoint_bytes_per_decoded_token(ck: Checkpoint) -> int:
    """Weight bytes one decode step reads, counted from the tensors as stored."""
    return bytes_per_decoded_token(((name, t.spec.nbytes) for name, t in ck.tensors.items()), ck.arch)


def summarize(ck: Checkpoint) -> CheckpointSummary:
    files: dict[str, int] = {}
    for t in ck.tensors.values():
        files.setdefault(t.path.name, t.path.stat().st_size)
    return CheckpointSummary(
        directory=ck.directory,
        layout=ck.layout,
        arch=ck.arch,
        files=dict(sorted(files.items())),
        tensor_bytes=ck.total_bytes,
        expert_bytes=sum(t.spec.nbytes for name, t in ck.tensors.items() if is_expert_tensor(name)),
        params=ck.arch.parameter_counts(),
        bytes_per_token=checkpoint_bytes_per_decoded_token(ck),
        dense_quantization=quantization_overrides(ck.config),
    )


def inspect_checkpoint(path: str | Path) -> CheckpointSummary:
    return summarize(open_checkpoint(Path(path).expanduser()))
