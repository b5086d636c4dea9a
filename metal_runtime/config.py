"""Reading a model folder's config.json into the shared `Architecture` (+ its quantization overrides)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptoss_metal.architecture import Architecture, ArchitectureError, foreign_model_type, quantization_overrides

from .errors import ModelLoadError


def read_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{directory}: no config.json (is this a converted gpt-oss folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return cfg


def architecture_from_config(cfg: dict[str, Any], where: str = "config.json") -> Architecture:
    problem = foreign_model_type(cfg, where)
    if problem:
        raise ModelLoadError(problem)
    try:
        arch = Architecture.from_hf_config(cfg)
        arch.validate()
    except ArchitectureError as e:
        raise ModelLoadError(f"{where}: {e}") from None
    return arch


def read_model_config(directory: Path) -> tuple[Architecture, dict[str, dict]]:
    """(architecture, per-module quantization overrides) of a runtime-layout folder."""
    cfg = read_config(directory)
    return architecture_from_config(cfg, str(Path(directory) / "config.json")), quantization_overrides(cfg)
