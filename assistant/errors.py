"""User-facing errors of the assistant layer (conversations, turns, saved files, registered functions).

Harmony's own user errors (a bad message, tool schema or vocabulary) are `harmony_io.HarmonyIOError`;
these are the assistant's. The CLI edge (cli/errors.py) and the chat page's API turn both into one
clean message.
"""


class AssistantError(Exception):
    """A conversation or turn problem the user can fix, said in one line."""


class ContextFull(AssistantError):
    """The conversation no longer fits the model's context: start a new one."""


class NoSuchConversation(AssistantError):
    """A stored conversation that does not exist (or was deleted meanwhile)."""
