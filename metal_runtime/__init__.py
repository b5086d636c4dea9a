"""The gpt-oss model in MLX: loading, KV caches, sampling and generation. Knows token ids only."""

from .cache import CacheSnapshot, ModelCache
from .errors import CacheError, ContextOverflowError, GenerationError, ModelLoadError, RuntimeUserError
from .generate import generate, prefill
from .loading import load
from .model import Model
from .sampling import make_sampler, top_p_mask
from .sequence import GenerationStats

__all__ = [
    "CacheError",
    "CacheSnapshot",
    "ContextOverflowError",
    "GenerationError",
    "GenerationStats",
    "Model",
    "ModelCache",
    "ModelLoadError",
    "RuntimeUserError",
    "generate",
    "load",
    "make_sampler",
    "prefill",
    "top_p_mask",
]
