"""User-facing errors of the runtime: bad model folders, context overflow, invalid cache use.

The CLI and server show these without a traceback; anything else escaping the runtime is a bug.
"""

from __future__ import annotations

from typing import ContextManager

from gptoss_metal.architecture import reported_as


class RuntimeUserError(Exception):
    """Base of errors a user (or an API client) can cause."""


class ModelLoadError(RuntimeUserError):
    """A model folder cannot be loaded: missing files, wrong layout, inconsistent tensors."""


class ContextOverflowError(RuntimeUserError):
    """The sequence would exceed the model's maximum number of positions."""


class CacheError(RuntimeUserError):
    """A cache operation that cannot be done exactly (e.g. restoring an invalidated snapshot)."""


class GenerationError(RuntimeUserError):
    """Invalid generation parameters (temperature, top_p, max_tokens, empty prompt)."""


def reported() -> ContextManager[None]:
    """The shared checkpoint reader's `CheckpointError`s, raised as `ModelLoadError`s (message unchanged)."""
    return reported_as(ModelLoadError)
