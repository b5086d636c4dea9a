"""The edge where user errors become one red line and an exit status, never a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape

from gptoss_metal.converters import ConversionError

err_console = Console(stderr=True)
_prefix = ""


def set_error_prefix(prefix: str) -> None:
    """Say which process an error comes from (a rank of a group: `[rank 1/2] `)."""
    global _prefix
    _prefix = prefix


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every package's user-facing error class (imported lazily: keeps `gptoss --help` fast)."""
    types: list[type[BaseException]] = [ConversionError]
    try:
        from gptoss_metal.metal_runtime.errors import RuntimeUserError

        types.append(RuntimeUserError)
    except ImportError:  # pragma: no cover - package not built yet
        pass
    try:
        from gptoss_metal.assistant.errors import AssistantError  # the store's, a turn's, a saved file's

        types.append(AssistantError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from gptoss_metal.harmony_io.errors import HarmonyIOError

        types.append(HarmonyIOError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def handle_user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except user_error_types() as e:
            err_console.print(f"{escape(_prefix)}[bold red]error:[/] {escape(str(e))}", highlight=False)
            sys.exit(1)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)

    return wrapper
