"""`gptoss synth | convert | inspect`: checkpoint files in, checkpoint files out."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from gptoss_metal.converters import PRESETS, convert, inspect_checkpoint, synth

from .errors import handle_user_errors
from .progress import byte_progress

console = Console(stderr=True)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@click.command("synth")
@click.argument("dst", type=click.Path())
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["original", "hf"]), default="hf", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_user_errors
def synth_cmd(dst: str, preset: str, fmt: str, seed: int, force: bool, quiet: bool) -> None:
    """Write a RANDOM-weight gpt-oss checkpoint in an official layout (for tests and benchmarks)."""
    with byte_progress(console, not quiet) as (start, advance):
        path = synth(dst, preset=preset, fmt=fmt, seed=seed, force=force, on_start=start, on_advance=advance)
    console.print(f"wrote random-weight [bold]{preset}[/] checkpoint ({fmt} layout, seed {seed}) to {path}")


@click.command("convert")
@click.argument("src")
@click.argument("dst", type=click.Path())
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@click.option("--quantize-dense", type=click.Choice(["q8", "q4"]), default=None,
              help="Also quantize attention projections, embedding and unembedding (MLX affine, group 64).")
@click.option("--revision", default=None, help="Hub revision when SRC is a Hugging Face repo id.")
@click.option("--max-shard-gb", type=float, default=5.0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_user_errors
def convert_cmd(src: str, dst: str, force: bool, quantize_dense: str | None, revision: str | None,
                max_shard_gb: float, quiet: bool) -> None:
    """Convert SRC (folder or Hugging Face repo id, e.g. openai/gpt-oss-20b) into the runtime layout at DST."""
    with byte_progress(console, not quiet) as (start, advance):
        result = convert(src, dst, force=force, quantize_dense=quantize_dense, revision=revision,
                         max_shard_bytes=int(max_shard_gb * 1e9), on_start=start, on_advance=advance)
    extra = f", {result.quantized_modules} dense modules quantized" if result.quantized_modules else ""
    console.print(f"converted {result.layout} checkpoint {result.source} -> {result.destination} "
                  f"({len(result.files)} shard(s), {_gb(result.bytes_written)}{extra})")


@click.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_user_errors
def inspect_cmd(path: str, as_json: bool) -> None:
    """Layout, config, sizes, parameter counts and bytes read per decoded token of a checkpoint."""
    s = inspect_checkpoint(path)
    if as_json:
        click.echo(json.dumps(s.to_dict(), indent=2))
        return
    a = s.arch
    out = Console()
    table = Table(title=f"{s.directory} ({s.layout} layout)", show_header=False)
    table.add_row("layers / experts / top-k", f"{a.num_hidden_layers} / {a.num_local_experts} / {a.num_experts_per_tok}")
    table.add_row("hidden / intermediate", f"{a.hidden_size} / {a.intermediate_size}")
    table.add_row("heads (q / kv) x head_dim", f"{a.num_attention_heads} / {a.num_key_value_heads} x {a.head_dim}")
    table.add_row("vocab / sliding window", f"{a.vocab_size} / {a.sliding_window}")
    table.add_row("context", f"{a.max_position_embeddings} (YaRN x{a.rope_factor:g})")
    assert s.params is not None
    table.add_row("parameters (total)", f"{s.params.total / 1e9:.3f} B")
    table.add_row("parameters (active / token)", f"{s.params.active / 1e9:.3f} B (excl. embedding table)")
    table.add_row("tensor bytes", _gb(s.tensor_bytes))
    table.add_row("files", ", ".join(f"{k} ({_gb(v)})" for k, v in s.files.items()))
    table.add_row("bytes read / decoded token", f"{_gb(s.bytes_per_token)} (weights, without KV cache)")
    if s.dense_quantization:
        kinds = {json.dumps(v, sort_keys=True) for v in s.dense_quantization.values()}
        table.add_row("dense quantization", f"{len(s.dense_quantization)} modules: {', '.join(sorted(kinds))}")
    out.print(table)


def register(group: click.Group) -> None:
    for cmd in (synth_cmd, convert_cmd, inspect_cmd):
        group.add_command(cmd)
