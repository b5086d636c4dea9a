"""`gptoss serve`: the OpenAI-compatible HTTP server (FastAPI + uvicorn)."""

from __future__ import annotations

import click
from rich.console import Console

from gptoss_metal.server.auth import exposure_warning
from gptoss_metal.server.limits import DEFAULT_MAX_BODY_BYTES

from .errors import handle_user_errors
from .generate import DTYPES

err = Console(stderr=True, highlight=False)


@click.command("serve")
@click.argument("model_path", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Use 0.0.0.0 to listen on all interfaces.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="GPTOSS_API_KEY", default=None,
              help="Require `Authorization: Bearer KEY` on /v1 routes (or set GPTOSS_API_KEY).")
@click.option("--model-id", default=None, help="Model name clients use (default: the folder name).")
@click.option("--alias", multiple=True, help="Extra accepted model names (repeatable).")
@click.option("--max-queue", type=click.IntRange(1), default=64, show_default=True,
              help="Requests waiting beyond this get 429.")
@click.option("--max-tokens", type=click.IntRange(1), default=4096, show_default=True,
              help="Default completion limit when a request sets none.")
@click.option("--dtype", type=DTYPES, default="bfloat16", show_default=True)
@click.option("--max-body-bytes", type=click.IntRange(1024), envvar="GPTOSS_MAX_BODY_BYTES",
              default=DEFAULT_MAX_BODY_BYTES, show_default=True, help="Larger request bodies get 413.")
@handle_user_errors
def serve_cmd(model_path: str, host: str, port: int, api_key: str | None, model_id: str | None,
              alias: tuple[str, ...], max_queue: int, max_tokens: int, dtype: str, max_body_bytes: int) -> None:
    """Serve MODEL_PATH at http://HOST:PORT/v1 (chat completions and responses)."""
    import uvicorn

    from gptoss_metal.assistant import Engine
    from gptoss_metal.server.app import create_app
    from gptoss_metal.server.openai_api import OpenAIService

    with err.status("loading model..."):
        engine = Engine.load(model_path, dtype=dtype, model_id=model_id)
    service = OpenAIService(engine, aliases=alias, max_queue=max_queue, default_max_tokens=max_tokens)
    warning = exposure_warning(host, api_key)
    if warning:
        err.print(f"[yellow]warning:[/] {warning}")
    err.print(f"serving [bold]{service.model_id}[/] at http://{host}:{port}/v1")
    uvicorn.run(create_app(service, api_key=api_key, max_body_bytes=max_body_bytes), host=host, port=port,
                log_level="warning")


def register(group: click.Group) -> None:
    group.add_command(serve_cmd)
