"""Which of a request's tools this server can offer the model, and which it leaves out.

Function tools are declared to the model (Responses `namespace` tools as harmony namespaces of their
own). Hosted tools -- the ones OpenAI's servers run themselves (`web_search`, `file_search`,
`code_interpreter`, `computer_use_preview`, `image_generation`, `mcp`, the reference server's
`browser_search`, ...) -- cannot run here, offline: a client that sends them by default (Codex CLI sends
`web_search`) still gets its answer, without them. They are left out of the prompt, logged once per
type at warning level and listed in the response's `x-gptoss-ignored-tools` header. So are free-form
`custom` tools, which have no harmony form.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

from .api_models import APIError

IGNORED_TOOLS_HEADER = "x-gptoss-ignored-tools"
log = logging.getLogger("gptoss.server")
_warned: set[str] = set()


def usable_tools(tools: Optional[Sequence[Any]]) -> tuple[list[dict], list[str]]:
    """(the tools the model is offered, the types left out)."""
    kept: list[dict] = []
    left_out: list[str] = []
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict):
            raise APIError(400, f"tools[{i}] must be an object", param=f"tools.[{i}]")
        kind = tool.get("type", "function")
        if kind == "function":
            kept.append(tool)
        elif kind == "namespace":
            members = [m for m in tool.get("tools") or [] if not isinstance(m, dict) or m.get("type", "function") == "function"]
            left_out += [m.get("type") for m in tool.get("tools") or [] if isinstance(m, dict) and m not in members]
            if members:
                kept.append(dict(tool, tools=members))
        else:
            left_out.append(str(kind))
    for kind in left_out:
        if kind not in _warned:
            _warned.add(kind)
            log.warning("leaving out %r tools: this server cannot run them (offline); the model is not offered them",
                        kind)
    return kept, left_out
