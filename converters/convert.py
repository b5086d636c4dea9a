"""`convert`: any supported checkpoint -> the runtime layout, streamed, validated, atomic."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from gptoss_metal.architecture import quantization_overrides

from .atomic import atomic_directory
from .checkpoint import Checkpoint, open_checkpoint
from .errors import ConversionError
from .hub import resolve_source
from .layouts import DENSE_QUANT_GROUP, HF, ORIGINAL, RUNTIME, dense_quantizable_modules, expected_runtime
from .plan import plan_conversion, run_transfer
from .safetensors_io import ShardedWriter

AUX_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)
QUANTIZE_DENSE_BITS = {"q8": 8, "q4": 4}
MXFP4_QUANTIZATION = {"group_size": 32, "bits": 4, "mode": "mxfp4"}

# Progress is counted in output bytes: `on_start(total, label)` once, then `on_advance(n)` per chunk.
ProgressStart = Callable[[int, str], None]
ProgressAdvance = Callable[[int], None]


@dataclass
class ConversionResult:
    source: Path
    layout: str
    destination: Path
    files: list[Path] = field(default_factory=list)
    bytes_read: int = 0
    bytes_written: int = 0
    quantized_modules: int = 0


def runtime_config(ck: Checkpoint, quant: dict[str, int]) -> dict:
    """config.json of the runtime layout: HF gpt_oss keys + MLX `quantization` with overrides."""
    if ck.layout == ORIGINAL:
        cfg = ck.arch.hf_config()
    else:
        cfg = {k: v for k, v in ck.config.items() if k not in ("quantization", "quantization_config")}
        cfg.setdefault("layer_types", list(ck.arch.layer_types))
        cfg.setdefault("max_position_embeddings", ck.arch.max_position_embeddings)
    quantization: dict = dict(MXFP4_QUANTIZATION)
    if ck.layout == RUNTIME:
        quantization.update(quantization_overrides(ck.config))
    for module, bits in quant.items():
        quantization[module] = {"group_size": DENSE_QUANT_GROUP, "bits": bits, "mode": "affine"}
    cfg["quantization"] = quantization
    cfg["quantization_config"] = quantization
    return cfg


def _quant_targets(ck: Checkpoint, quantize_dense: Optional[str]) -> dict[str, int]:
    if quantize_dense is None:
        return {}
    if quantize_dense not in QUANTIZE_DENSE_BITS:
        raise ConversionError(f"--quantize-dense must be one of {sorted(QUANTIZE_DENSE_BITS)}, got {quantize_dense!r}")
    bits = QUANTIZE_DENSE_BITS[quantize_dense]
    already = quantization_overrides(ck.config) if ck.layout == RUNTIME else {}
    return {m: bits for m in dense_quantizable_modules(ck.arch) if m not in already}


def _aux_sources(ck: Checkpoint) -> list[Path]:
    folders = [ck.directory]
    if ck.directory.name == "original":
        folders.append(ck.directory.parent)
    found: dict[str, Path] = {}
    for folder in folders:
        for name in AUX_FILES:
            if name not in found and (folder / name).is_file():
                found[name] = folder / name
    return list(found.values())


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    force: bool = False,
    quantize_dense: Optional[str] = None,
    max_shard_bytes: int = 5 * 10**9,
    on_start: Optional[ProgressStart] = None,
    on_advance: Optional[ProgressAdvance] = None,
    revision: Optional[str] = None,
) -> ConversionResult:
    """Convert `src` (folder or HF repo id) into the runtime layout at `dst`.

    Everything structural is validated before the output folder is created; content checks run
    while streaming into a temporary sibling that is deleted if anything fails.
    """
    dst = Path(dst).expanduser().absolute()
    if dst.exists() and not force:
        raise ConversionError(f"{dst} already exists (use --force to replace it)")
    source = resolve_source(src, revision=revision)
    if source.resolve() == dst.resolve() or dst.resolve() in source.resolve().parents:
        raise ConversionError(f"destination {dst} would overwrite the source {source}")
    ck = open_checkpoint(source)
    quant = _quant_targets(ck, quantize_dense)
    out_config = runtime_config(ck, quant)
    runtime = expected_runtime(ck.arch, quantization_overrides(out_config))
    plan = plan_conversion(ck.expected, runtime, ck.tensors, quant)
    # One canonical tensor order, whatever the source layout: same weights -> identical files.
    order = {e.name: i for i, e in enumerate(runtime)}
    outputs = sorted((spec for tr in plan for spec in tr.outputs), key=lambda s: order[s.name])
    total_read = sum(tr.read_bytes for tr in plan)
    result = ConversionResult(source=ck.directory, layout=ck.layout, destination=dst, quantized_modules=len(quant))
    with atomic_directory(dst, force=force) as tmp:
        (tmp / "config.json").write_text(json.dumps(out_config, indent=2) + "\n")
        for aux in _aux_sources(ck):
            shutil.copyfile(aux, tmp / aux.name)
        writer = ShardedWriter(tmp, outputs, max_shard_bytes=max_shard_bytes)
        total_write = sum(s.nbytes for s in outputs)
        if on_start:
            on_start(total_write, f"{ck.layout} -> runtime")
        try:
            for tr in plan:
                for name, offset, data in run_transfer(tr):
                    writer.write(name, offset, data)
                    if on_advance:
                        on_advance(len(data))
        except BaseException:
            writer.abort()
            raise
        files = writer.close()
        result.bytes_read = total_read
        result.bytes_written = total_write
    result.files = [dst / f.name for f in files]
    return result


__all__ = ["convert", "ConversionResult", "runtime_config", "HF", "ORIGINAL", "RUNTIME"]
