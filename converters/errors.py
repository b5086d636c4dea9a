"""User-facing errors of the converters package.

Everything a user can cause with a bad path, a corrupt file or an unsupported checkpoint is a
`ConversionError` with a message that names the file and tensor. The CLI prints it without a
traceback; anything else that escapes is a bug and should stay loud.
"""


class ConversionError(Exception):
    """A checkpoint cannot be read, validated or written; the message says why and where."""
