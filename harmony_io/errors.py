"""User-facing errors of harmony_io (bad conversations, bad tool schemas, missing vocabulary)."""


class HarmonyIOError(Exception):
    """A conversation, tool declaration or vocabulary problem the caller can fix."""
