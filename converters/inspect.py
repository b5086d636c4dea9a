"""`gptoss inspect`: what a checkpoint holds, how big it is, and what one decoded token reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import Checkpoint, open_checkpoint
from .layouts import ArchConfig


@dataclass
class ParameterCounts:
    total: int
    active: int  # per decoded token, without the embedding table (one row of it is read)
    experts: int
    embedding: int


@dataclass
class CheckpointSummary:
    directory: Path
    layout: str
    arch: ArchConfig
    files: dict[str, int] = field(default_factory=dict)  # file name -> bytes on disk
    tensor_bytes: int = 0
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
            "parameters": vars(self.params) if self.params else None,
            "bytes_per_decoded_token": self.bytes_per_token,
            "dense_quantization": self.dense_quantization,
        }


def parameter_counts(a: ArchConfig) -> ParameterCounts:
    H, I, E, V, hd = a.hidden_size, a.intermediate_size, a.num_experts, a.vocab_size, a.head_dim
    q, kv = a.num_attention_heads * hd, a.num_key_value_heads * hd
    attn = q * H + 2 * kv * H + q + 2 * kv + H * q + H + a.num_attention_heads + 2 * H
    router = E * H + E
    per_expert = 2 * I * H + 2 * I + H * I + H
    layers = a.num_hidden_layers
    embedding = V * H
    total = embedding + layers * (attn + router + E * per_expert) + H + V * H
    active = layers * (attn + router + a.experts_per_token * per_expert) + H + V * H
    return ParameterCounts(total=total, active=active, experts=layers * E * per_expert, embedding=embedding)


def _is_expert_tensor(name: str) -> bool:
    return ".mlp.experts." in name or ".mlp.mlp1_" in name or ".mlp.mlp2_" in name


def _is_embedding(name: str) -> bool:
    return name.startswith(("model.embed_tokens.", "embedding."))


def bytes_per_decoded_token(ck: Checkpoint) -> int:
    """Weight bytes one decode step reads: experts x k/E, one embedding row, everything else.

    Counted from the tensors actually stored (their dtypes, quantization scales and biases
    included), which is what memory bandwidth pays for on a Mac.
    """
    a = ck.arch
    total = 0.0
    for name, t in ck.tensors.items():
        n = t.spec.nbytes
        if _is_expert_tensor(name):
            total += n * a.experts_per_token / a.num_experts
        elif _is_embedding(name):
            total += n / a.vocab_size
        else:
            total += n
    return int(round(total))


def summarize(ck: Checkpoint) -> CheckpointSummary:
    files: dict[str, int] = {}
    for t in ck.tensors.values():
        files.setdefault(t.path.name, t.path.stat().st_size)
    q = ck.config.get("quantization") or {}
    return CheckpointSummary(
        directory=ck.directory,
        layout=ck.layout,
        arch=ck.arch,
        files=dict(sorted(files.items())),
        tensor_bytes=ck.total_bytes,
        params=parameter_counts(ck.arch),
        bytes_per_token=bytes_per_decoded_token(ck),
        dense_quantization={k: v for k, v in q.items() if isinstance(v, dict)},
    )


def inspect_checkpoint(path: str | Path) -> CheckpointSummary:
    return summarize(open_checkpoint(Path(path).expanduser()))
