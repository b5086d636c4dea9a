"""The errors of reading a checkpoint, shared by both sides of the converters/runtime wall.

Each side reports them as its own user error (`ConversionError`, `ModelLoadError`) with the message
unchanged, so `gptoss convert` and the loader say the same thing about the same folder.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class ArchitectureError(ValueError):
    """A config that does not describe a gpt-oss model this runtime can run (message names the key)."""


class CheckpointError(ValueError):
    """A folder or file that is not a readable gpt-oss checkpoint; the message says what and where."""


@contextmanager
def reported_as(error: type[Exception]) -> Iterator[None]:
    """Inside: a `CheckpointError` is raised again as `error` (a side's own user error), message unchanged."""
    try:
        yield
    except CheckpointError as e:
        raise error(str(e)) from None
