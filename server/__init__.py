"""HTTP only: the OpenAI-compatible API (chat completions + responses) over the assistant layer."""
