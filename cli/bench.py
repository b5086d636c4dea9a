"""`gptoss bench`: speed, memory and bytes per token of a converted model, with Apple projections."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from .errors import handle_user_errors
from .generate import DTYPES, memory_option


@click.command("bench")
@click.argument("model_path", type=click.Path())
@click.option("--prompt-tokens", type=click.IntRange(2), default=512, show_default=True)
@click.option("--gen-tokens", type=click.IntRange(2), default=64, show_default=True)
@click.option("--dtype", type=DTYPES, default="bfloat16", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@memory_option
@handle_user_errors
def bench_cmd(model_path: str, prompt_tokens: int, gen_tokens: int, dtype: str, as_json: bool,
              max_memory: int | None) -> None:
    """Prefill/decode tok/s, time to first token, peak memory, bytes read per decoded token; with a model
    bigger than --max-memory, the expert cache's hit rate and the bytes it read from disk per token."""
    from gptoss_metal.metal_runtime import load
    from gptoss_metal.metal_runtime.bench import run_bench

    r = run_bench(load(model_path, dtype=dtype, max_memory=max_memory), prompt_tokens, gen_tokens)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=2))
        return
    c = Console()
    t = Table(title=f"gptoss bench {model_path} ({r.backend} backend)", show_header=False)
    t.add_row("prefill", f"{r.prefill_tps:.1f} tok/s ({r.prompt_tokens} tokens)")
    t.add_row("decode", f"{r.decode_tps:.2f} tok/s ({r.gen_tokens} tokens)")
    t.add_row("time to first token", f"{r.ttft_s:.2f} s")
    t.add_row("peak memory", f"{r.peak_rss_bytes / 2**30:.2f} GiB RSS"
              + (f", {r.peak_mlx_bytes / 2**30:.2f} GiB MLX" if r.peak_mlx_bytes else ""))
    b = r.bytes_per_token
    t.add_row("bytes / decoded token", f"{b['total'] / 1e9:.3f} GB (weights {b['weights'] / 1e9:.3f} GB + KV "
              f"{b['kv'] / 1e6:.1f} MB at {b['context']} tokens)")
    e = r.expert_cache
    if e is None:
        t.add_row("expert cache", "none: the whole model is in memory")
    else:
        t.add_row("expert cache", f"{e['slots']} slots per layer ({e['policy']}, read-ahead "
                  f"{'on' if e['prefetch'] else 'off'}), {e['resident_bytes'] / 2**30:.2f} GiB resident")
        t.add_row("cache hit rate (decode)", f"{e['hit_rate']:.1%}")
        t.add_row("read from disk", f"{e['disk_bytes_per_token'] / 1e6:.1f} MB per decoded token; prefill "
                  f"{e['prefill_disk_bytes'] / 1e6:.1f} MB")
    c.print(t)
    p = Table(title="projected decode ceiling (bandwidth / bytes per token; not a measurement)")
    p.add_column("chip")
    p.add_column("tok/s", justify="right")
    for chip, tps in r.projected_decode_tps.items():
        p.add_row(chip, f"{tps:.0f}")
    c.print(p)


def register(group: click.Group) -> None:
    group.add_command(bench_cmd)
