"""`gptoss serve` and `gptoss app`: the OpenAI-compatible server and the chat page (FastAPI + uvicorn)."""

from __future__ import annotations

import logging
import socket
import sys
import webbrowser
from pathlib import Path
from typing import Callable, Optional

import click
from rich.console import Console

from gptoss_metal.server.auth import exposure_warning
from gptoss_metal.server.limits import DEFAULT_MAX_BODY_BYTES
from gptoss_metal.server.security import WILDCARD_HOSTS

from .errors import handle_user_errors
from .generate import DTYPES, memory_option
from .group import Ranks, load_engine, run_command
from .launch import distributed_option, relaunch

err = Console(stderr=True, highlight=False, soft_wrap=True)  # a URL is never split over lines


def server_options(fn: Callable) -> Callable:
    """The options `serve` and `app` share."""
    options = [
        click.argument("model_path", type=click.Path()),
        click.option("--host", default="127.0.0.1", show_default=True,
                     help="Use 0.0.0.0 to listen on all interfaces."),
        click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True),
        click.option("--api-key", envvar="GPTOSS_API_KEY", default=None,
                     help="Require `Authorization: Bearer KEY` on /v1 and the page's API (or set GPTOSS_API_KEY)."),
        click.option("--model-id", default=None, help="Model name clients use (default: the folder name)."),
        click.option("--alias", multiple=True, help="Extra accepted model names (repeatable)."),
        click.option("--max-queue", type=click.IntRange(1), default=64, show_default=True,
                     help="Requests waiting beyond this get 429."),
        click.option("--max-tokens", type=click.IntRange(1), default=4096, show_default=True,
                     help="Default completion limit when a request sets none."),
        click.option("--dtype", type=DTYPES, default="bfloat16", show_default=True),
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="GPTOSS_DATA_DIR",
                     default=None, help="Where the chat page keeps conversations (default: the user data folder, "
                     "e.g. ~/Library/Application Support/gptoss-metal; or set GPTOSS_DATA_DIR)."),
        click.option("--cache-slots", type=click.IntRange(1, 64), default=4, show_default=True,
                     help="Prompt caches kept for different conversations (each holds its KV cache in memory)."),
        click.option("--allow-host", multiple=True,
                     help="Another name this server answers to, e.g. mymac.local (repeatable; loopback names "
                     "and IP addresses always work)."),
        click.option("--allow-origin", multiple=True,
                     help="A web origin whose pages may call the API from a browser, e.g. http://localhost:3000 "
                     "(repeatable; '*' allows any: only on a trusted machine)."),
        click.option("--page-temperature", type=click.FloatRange(0.0, 2.0), default=1.0, show_default=True,
                     help="Sampling temperature of the chat page's answers."),
        click.option("--max-sequences", type=click.IntRange(1, 64), default=4, show_default=True,
                     help="Requests decoded together in one batched forward pass (more wait in the queue)."),
        click.option("--kv-budget-gb", type=click.FloatRange(0.1), default=None,
                     help="KV-cache memory all conversations may hold together [default: a quarter of RAM]."),
        click.option("--max-body-bytes", type=click.IntRange(1024), envvar="GPTOSS_MAX_BODY_BYTES",
                     default=DEFAULT_MAX_BODY_BYTES, show_default=True, help="Larger request bodies get 413."),
        click.option("--no-speculate", "no_speculate", is_flag=True,
                     help="Turn off prompt-lookup speculative decoding by default (requests may still set "
                          "`speculate`)."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
                     show_default=True, help="info: one line per request on stderr (method, path, status, tokens, "
                     "tok/s, time to first token, finish reason); error: only failed requests."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return memory_option(fn)


def _url(host: str, port: int) -> str:
    if host in WILDCARD_HOSTS:  # listening everywhere: point at this machine
        host = "::1" if ":" in host else "127.0.0.1"
    shown = "[::1]" if host == "::1" else host
    return f"http://{shown}:{port}/"


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def run_server(model_path: str, host: str, port: int, api_key: Optional[str], model_id: Optional[str],
               alias: tuple[str, ...], max_queue: int, max_tokens: int, dtype: str, data_dir: Optional[Path],
               cache_slots: int, allow_host: tuple[str, ...], allow_origin: tuple[str, ...],
               page_temperature: float, open_browser: bool, max_sequences: int = 4,
               kv_budget_gb: Optional[float] = None, no_speculate: bool = False,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, log_level: str = "info",
               max_memory: Optional[int] = None, ranks: Optional[Ranks] = None) -> None:
    from gptoss_metal.server.assembly import assemble
    from gptoss_metal.server.lifecycle import serve

    if not _port_free(host, port):
        if not open_browser:
            raise click.ClickException(f"port {port} on {host} is in use: pick another with --port")
        port = 0  # `gptoss app`: any free port will do
    with err.status("loading model..."):
        from gptoss_metal.metal_runtime.diagnostics import total_memory_bytes

        ram = total_memory_bytes()
        budget = int(kv_budget_gb * 2**30) if kv_budget_gb else (ram // 4 if ram else None)
        # over ranks, rank 0 serves one request at a time (Engine forces one sequence, one cache); the others follow
        engine = load_engine(ranks, model_path, dtype=dtype, model_id=model_id, cache_slots=cache_slots,
                             max_sequences=max_sequences, kv_budget_bytes=budget, speculate=not no_speculate,
                             max_memory=max_memory)
    server = assemble(engine, data_dir=data_dir, api_key=api_key, bind=host, allow_hosts=allow_host,
                      allow_origins=allow_origin, aliases=alias, max_queue=max_queue, max_tokens=max_tokens,
                      page_temperature=page_temperature, max_body_bytes=max_body_bytes)
    warning = exposure_warning(host, api_key)
    if warning:
        err.print(f"[yellow]warning:[/] {warning}")
    if ranks is not None:
        err.print(f"spread over {ranks.group.size} ranks ({ranks.group.backend} backend): requests decode one at a "
                  "time, the others wait in the queue")
    if "*" in allow_origin:
        err.print("[yellow]warning:[/] --allow-origin '*': any web page you visit can use this server")
    _log_requests(log_level)

    def started(bound: int) -> None:
        url = _url(host, bound)
        err.print(f"serving [bold]{server.service.model_id}[/]: chat page {url}  API {url}v1  "
                  f"(conversations in {server.database}; Ctrl-C to stop)")
        if open_browser and not webbrowser.open(url):
            err.print(f"open {url} in your browser")

    status = serve(server, host, port, on_started=started, say=lambda text: err.print(f"gptoss: {text}"))
    if status:
        sys.exit(status)


def _log_requests(level: str) -> None:
    """The request log (server/request_log.py) on stderr, at `level`."""
    log = logging.getLogger("gptoss.server")
    log.setLevel(level.upper())
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.propagate = False


@click.command("serve")
@server_options
@click.option("--open", "open_browser", is_flag=True, help="Open the chat page in the default browser.")
@distributed_option
@handle_user_errors
def serve_cmd(open_browser: bool, hostfile: Optional[str], **options) -> None:
    """Serve MODEL_PATH: the chat page at http://HOST:PORT/ and the OpenAI API at /v1.

    Spread over several Macs (--distributed or mlx.launch), rank 0 serves and requests run one at a time.
    """
    relaunch(hostfile)
    run_command(lambda ranks: run_server(open_browser=open_browser, ranks=ranks, **options))


@click.command("app")
@server_options
@distributed_option
@handle_user_errors
def app_cmd(hostfile: Optional[str], **options) -> None:
    """Chat with MODEL_PATH in your browser, offline (`gptoss serve --open`; another port if 8000 is taken)."""
    relaunch(hostfile)
    run_command(lambda ranks: run_server(open_browser=True, ranks=ranks, **options))


def register(group: click.Group) -> None:
    group.add_command(serve_cmd)
    group.add_command(app_cmd)
