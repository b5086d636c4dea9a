"""`gptoss doctor`: is this machine ready to run gpt-oss, and which fast paths are active?"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import handle_user_errors


def _gb(n) -> str:
    return "unknown" if n is None else f"{n / 2**30:.1f} GiB"


@click.command("doctor")
@click.argument("model_path", required=False, type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@click.option("--retime", is_flag=True, help="Check and race the Metal kernels again instead of using the "
                                             "verdicts stored for this machine and MLX version.")
@handle_user_errors
def doctor_cmd(model_path: str | None, as_json: bool, retime: bool) -> None:
    """Platform, MLX backend, Metal kernels (self-tested and raced against the MLX path), vocabulary,
    memory vs MODEL_PATH."""
    import os

    from gptoss_metal.harmony_io import HarmonyIOError, vocab_status
    from gptoss_metal.metal_runtime.diagnostics import diagnostics

    if retime:
        os.environ["GPTOSS_KERNEL_RETIME"] = "1"

    info = diagnostics()
    try:
        vs = vocab_status()
        info["vocab"] = f"ok ({vs.source}: {vs.path})" if vs.path else f"ok ({vs.source})"
    except HarmonyIOError as e:
        info["vocab"] = f"MISSING: {e}"
    if model_path:
        from gptoss_metal.converters import inspect_checkpoint

        s = inspect_checkpoint(model_path)
        info["model"] = {"path": str(s.directory), "layout": s.layout, "tensor_bytes": s.tensor_bytes,
                         "bytes_per_decoded_token": s.bytes_per_token}
        mem = info["memory_bytes"]
        info["model"]["fits"] = None if mem is None else s.tensor_bytes < 0.75 * mem
    try:
        from gptoss_metal.assistant.tools.python_tool import PythonTool

        tool = PythonTool()
        try:
            info["python_tool"] = tool.describe()  # starts the interpreter: what applies is what it reports
            info["python_tool_containment"] = tool.containment
        finally:
            tool.close()
    except Exception as e:  # noqa: BLE001 - diagnostics must not die on an optional feature
        info["python_tool"] = [f"unavailable: {e}"]
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    t = Table(title="gptoss doctor", show_header=False)
    t.add_row("platform", f"{info['platform']}, Python {info['python']}")
    t.add_row("MLX", f"{info['mlx']} ({info['backend']} backend; Metal {'yes' if info['metal_available'] else 'no'})")
    for name, status in info["kernels"].items():
        style = "green" if status == "passed" else "red" if status.startswith("failed") else "yellow"
        t.add_row(f"kernel {name}", f"[{style}]{status}[/]")
    t.add_row("harmony vocab", info["vocab"])
    t.add_row("memory", _gb(info["memory_bytes"]))
    if "model" in info:
        m = info["model"]
        verdict = {True: "[green]fits[/]", False: "[red]too large for comfortable use[/]", None: ""}[m["fits"]]
        t.add_row("model", f"{m['path']} ({m['layout']}): {_gb(m['tensor_bytes'])} {verdict}; "
                           f"{m['bytes_per_decoded_token'] / 1e9:.2f} GB read per decoded token")
    t.add_row("python tool", "\n".join(escape(line) for line in info["python_tool"]))
    Console().print(t)


def register(group: click.Group) -> None:
    group.add_command(doctor_cmd)
