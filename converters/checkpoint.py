"""Opening a checkpoint folder of any supported layout, with structural validation.

Structural checks read only headers: they run before a conversion writes a byte and cost
milliseconds even for 120b. Content checks (scale bytes, non-finite values) need the data and run
while it streams (plan.check_chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptoss_metal.architecture import (
    Architecture,
    StoredTensor,
    affine_experts,
    architecture_from_config,
    foreign_model_type,
    foreign_weights,
    quantization_overrides,
    read_config,
)

from .errors import ConversionError, reported
from .layouts import ORIGINAL, RUNTIME, Expected, detect_layout, layout_table
from .safetensors_io import collect_tensors

MAX_LISTED = 8


@dataclass
class Checkpoint:
    directory: Path
    layout: str
    config: dict
    arch: Architecture
    tensors: dict[str, StoredTensor]
    expected: list[Expected]

    @property
    def total_bytes(self) -> int:
        return sum(t.spec.nbytes for t in self.tensors.values())


def checkpoint_folder(path: Path) -> Path:
    """The folder holding weights: `path`, or its `original/` child when only that has weights."""
    path = Path(path)
    has_weights = any(path.glob("*.safetensors"))
    if not has_weights and (path / "original" / "config.json").is_file():
        return path / "original"
    return path


def _listing(names: list[str], tensors: dict[str, StoredTensor] | None = None) -> str:
    shown = [f"{n} (in {tensors[n].path.name})" if tensors else n for n in names[:MAX_LISTED]]
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(shown) + more


def open_checkpoint(path: Path) -> Checkpoint:
    directory = checkpoint_folder(Path(path))
    if not directory.is_dir():
        raise ConversionError(f"{directory}: no such folder")
    if not any(directory.glob("*.safetensors")):
        problem = foreign_weights(directory)  # a GGUF or PyTorch download, said as such
        if problem:
            raise ConversionError(problem)
    with reported():
        cfg = read_config(directory)
    problem = foreign_model_type(cfg, str(directory / "config.json"))
    if problem:
        raise ConversionError(problem)
    tensors = collect_tensors(directory)
    layout = detect_layout(set(tensors))
    problem = affine_experts(tensors) if layout == RUNTIME else None
    if problem:
        raise ConversionError(f"{directory}: {problem}")
    if layout is None:
        raise ConversionError(
            f"{directory}: unrecognised checkpoint layout (expected OpenAI original/, Hugging Face "
            f"gpt_oss, or MLX gpt_oss tensor names; found e.g. {_listing(sorted(tensors)[:3])})"
        )
    with reported():
        arch = architecture_from_config(cfg, str(directory / "config.json"), original=layout == ORIGINAL)
    expected = layout_table(layout, arch, quantization_overrides(cfg))
    want = {e.name: e for e in expected}
    missing = [n for n in want if n not in tensors]
    if missing:
        raise ConversionError(f"{directory}: missing tensors: {_listing(missing)}")
    unexpected = sorted(n for n in tensors if n not in want)
    if unexpected:
        raise ConversionError(f"{directory}: unexpected tensors: {_listing(unexpected, tensors)}")
    for name, exp in want.items():
        spec = tensors[name].spec
        if not exp.matches(spec):
            raise ConversionError(
                f"{tensors[name].path}: tensor {name} is {spec.dtype}{list(spec.shape)}, "
                f"but config.json implies {exp.describe()}"
            )
    return Checkpoint(directory, layout, cfg, arch, tensors, expected)
