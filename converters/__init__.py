"""Checkpoint formats -> the runtime layout (streaming, validated, atomic), and synthetic checkpoints.

Imports neither metal_runtime nor harmony_io (DESIGN.md: arrows point one way). MLX is used only
lazily, for `--quantize-dense`.
"""

from gptoss_metal.architecture import Architecture

from .checkpoint import Checkpoint, open_checkpoint
from .convert import ConversionResult, convert
from .errors import ConversionError
from .inspect import CheckpointSummary, inspect_checkpoint
from .layouts import HF, ORIGINAL, RUNTIME
from .presets import PRESETS
from .synth import synth

__all__ = [
    "Architecture",
    "Checkpoint",
    "CheckpointSummary",
    "ConversionError",
    "ConversionResult",
    "HF",
    "ORIGINAL",
    "PRESETS",
    "RUNTIME",
    "convert",
    "inspect_checkpoint",
    "open_checkpoint",
    "synth",
]
