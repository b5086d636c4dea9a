"""A stored conversation as a file people keep: JSON (loadable by `gptoss chat`'s /load) or Markdown.

The JSON is ChatSession's save format (version 2, exact history included, so a loaded conversation
continues with prompt reuse) plus the page's metadata; the Markdown is for reading.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from gptoss_metal.harmony_io import PYTHON

from .conversations import Conversation
from .session import saved_conversation


def to_json(conv: Conversation) -> dict[str, Any]:
    return {**saved_conversation(conv.system, conv.effort, conv.messages),
            "title": conv.title, "id": conv.id, "created": conv.created, "python": conv.python,
            "current_date": conv.current_date,
            "figures": {str(k): v for k, v in sorted(conv.figures.items())}}


def _fence(text: str, lang: str = "") -> str:
    """A code fence longer than any backtick run inside `text`."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def _quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.strip().splitlines())


def to_markdown(conv: Conversation) -> str:
    when = _dt.datetime.fromtimestamp(conv.created).strftime("%Y-%m-%d %H:%M")
    out = [f"# {conv.title}", "", f"*{when} · reasoning effort {conv.effort}"
           + (" · python tool on" if conv.python else "") + "*", ""]
    if conv.system:
        out += ["**Instructions**", "", _quote(conv.system), ""]
    calls: dict[str, str] = {}
    for i, m in enumerate(conv.messages):
        role = m.get("role")
        if role == "user":
            out += ["## You", "", str(m.get("content") or ""), ""]
        elif role == "assistant":
            if m.get("reasoning"):
                out += ["<details><summary>Reasoning</summary>", "", _quote(m["reasoning"]), "", "</details>", ""]
            for c in m.get("tool_calls") or []:
                fn = c.get("function") or {}
                calls[c.get("id", "")] = fn.get("name", "")
                lang = "python" if fn.get("name") == PYTHON.name else "json"  # the fence's language: code or JSON
                out += [f"**Tool call: {fn.get('name', '?')}**", "", _fence(str(fn.get("arguments", "")), lang), ""]
            if m.get("content"):
                out += ["## Assistant", "", str(m["content"]) + (" *(stopped)*" if m.get("interrupted") else ""), ""]
            fig = conv.figures.get(i)
            if fig:
                out += [f"*{fig['prompt_tokens']} prompt tokens ({fig['reused_tokens']} reused), prefill "
                        f"{fig['prefill_tps']} tok/s, decode {fig['decode_tps']} tok/s*", ""]
        elif role == "tool":
            name = m.get("name") or calls.get(m.get("tool_call_id", ""), "tool")
            out += [f"**Output of {name}**", "", _fence(str(m.get("content") or "")), ""]
    return "\n".join(out).rstrip() + "\n"
