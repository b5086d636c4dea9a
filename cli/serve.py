"""`gptoss serve`: the OpenAI-compatible HTTP server (FastAPI + uvicorn)."""

from __future__ import annotations

import click
from rich.console import Console

from .errors import handle_user_errors
from .generate import DTYPES
from .group import Ranks, load_engine, run_command
from .launch import distributed_option, relaunch

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
@click.option("--max-sequences", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Requests decoded together in one batched forward pass (more wait in the queue).")
@click.option("--kv-budget-gb", type=click.FloatRange(0.1), default=None,
              help="KV-cache memory all conversations may hold together [default: a quarter of RAM].")
@click.option("--no-speculate", "no_speculate", is_flag=True,
              help="Turn off prompt-lookup speculative decoding by default (requests may still set "
                   "`speculate`).")
@distributed_option
@handle_user_errors
def serve_cmd(model_path: str, host: str, port: int, api_key: str | None, model_id: str | None,
              alias: tuple[str, ...], max_queue: int, max_tokens: int, dtype: str, max_sequences: int,
              kv_budget_gb: float | None, no_speculate: bool, hostfile: str | None) -> None:
    """Serve MODEL_PATH at http://HOST:PORT/v1 (chat completions and responses).

    Spread over several Macs (--distributed or mlx.launch), rank 0 serves and requests run one at a time.
    """
    relaunch(hostfile)
    run_command(lambda ranks: _serve(ranks, model_path, host, port, api_key, model_id, alias, max_queue, max_tokens,
                                     dtype, max_sequences, kv_budget_gb, no_speculate))


def _serve(ranks: Ranks | None, model_path: str, host: str, port: int, api_key: str | None, model_id: str | None,
           alias: tuple[str, ...], max_queue: int, max_tokens: int, dtype: str, max_sequences: int,
           kv_budget_gb: float | None, no_speculate: bool) -> None:
    import uvicorn

    from gptoss_metal.server.app import create_app
    from gptoss_metal.server.openai_api import OpenAIService

    with err.status("loading model..."):
        from gptoss_metal.metal_runtime.diagnostics import total_memory_bytes

        ram = total_memory_bytes()
        budget = int(kv_budget_gb * 2**30) if kv_budget_gb else (ram // 4 if ram else None)
        engine = load_engine(ranks, model_path, dtype=dtype, model_id=model_id, speculate=not no_speculate,
                             max_sequences=max_sequences, kv_budget_bytes=budget)
    service = OpenAIService(engine, aliases=alias, max_queue=max_queue, default_max_tokens=max_tokens)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        err.print("[yellow]warning:[/] listening beyond this machine without --api-key")
    if ranks is not None:
        err.print(f"spread over {ranks.group.size} ranks ({ranks.group.backend} backend): requests decode one at a "
                  "time, the others wait in the queue")
    err.print(f"serving [bold]{service.model_id}[/] at http://{host}:{port}/v1")
    uvicorn.run(create_app(service, api_key=api_key), host=host, port=port, log_level="warning")


def register(group: click.Group) -> None:
    group.add_command(serve_cmd)
