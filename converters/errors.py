"""User-facing errors of the converters package.

Everything a user can cause with a bad path, a corrupt file or an unsupported checkpoint is a
`ConversionError` with a message that names the file and tensor. The CLI prints it without a
traceback; anything else that escapes is a bug and should stay loud. What the shared checkpoint
reader (`gptoss_metal.architecture`) refuses reaches callers as a `ConversionError` too, its message
unchanged (`reported`).
"""

from __future__ import annotations

from typing import ContextManager

from gptoss_metal.architecture import reported_as


class ConversionError(Exception):
    """A checkpoint cannot be read, validated or written; the message says why and where."""


def reported() -> ContextManager[None]:
    """The shared reader's `CheckpointError`s, raised as `ConversionError`s."""
    return reported_as(ConversionError)
