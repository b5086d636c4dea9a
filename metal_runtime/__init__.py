"""The gpt-oss model in MLX: loading, KV caches, sampling and generation. Knows token ids only."""

from .cache import CacheSnapshot, ModelCache
from .config import ModelArgs
from .errors import CacheError, ContextOverflowError, GenerationError, ModelLoadError, RuntimeUserError
from .loading import load
from .model import Model

__all__ = [
    "CacheError",
    "CacheSnapshot",
    "ContextOverflowError",
    "GenerationError",
    "Model",
    "ModelArgs",
    "ModelCache",
    "ModelLoadError",
    "RuntimeUserError",
    "load",
]
