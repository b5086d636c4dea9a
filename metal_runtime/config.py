"""A model folder's config.json as the runtime needs it: the shared `Architecture` + quantization overrides."""

from __future__ import annotations

from pathlib import Path

from gptoss_metal.architecture import Architecture, quantization_overrides, read_architecture

from .errors import reported


def read_model_config(directory: Path) -> tuple[Architecture, dict[str, dict]]:
    """(architecture, per-module quantization overrides) of a runtime-layout folder, by the shared reader."""
    with reported():
        arch, cfg = read_architecture(Path(directory))
    return arch, quantization_overrides(cfg)
