"""The one reader of a checkpoint's config.json, for the converter and the loader alike.

Both sides ask the same questions of the same file and must give the same answers: is it there,
is it JSON, is it gpt-oss at all, which keys does it use (OpenAI's `original/` or Hugging Face's,
which the runtime layout keeps), and can this runtime run what it describes. The rules beyond the
keys live here once, the strictest of what either side used to apply: `rope_scaling.truncate=true`
rounds YaRN's correction range, which gpt-oss does not do, so it is refused everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ArchitectureError, CheckpointError
from .folders import foreign_model_type
from .hparams import Architecture


def read_config(directory: Path) -> dict[str, Any]:
    """config.json of a checkpoint folder as a dict (missing, not JSON, not an object: an error)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json (is this a gpt-oss checkpoint folder?)")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return cfg


def architecture_from_config(cfg: dict[str, Any], where: str, *, original: bool = False) -> Architecture:
    """The validated architecture a config describes; `original`: OpenAI's `original/` keys, else
    Hugging Face's (the runtime layout's and MLX community folders')."""
    problem = foreign_model_type(cfg, where)
    if problem:
        raise CheckpointError(problem)
    try:
        arch = Architecture.from_original_config(cfg) if original else Architecture.from_hf_config(cfg)
        if arch.rope_truncate:
            raise ArchitectureError("rope_scaling.truncate=true (gpt-oss uses the unrounded YaRN range)")
        arch.validate()
    except ArchitectureError as e:
        raise CheckpointError(f"{where}: unsupported config: {e}") from None
    return arch


def read_architecture(directory: Path, *, original: bool = False) -> tuple[Architecture, dict[str, Any]]:
    """(architecture, the config dict) of a checkpoint folder."""
    cfg = read_config(directory)
    return architecture_from_config(cfg, str(Path(directory) / "config.json"), original=original), cfg
