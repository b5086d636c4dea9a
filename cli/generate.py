"""`gptoss generate` and `gptoss demo`: one prompt in, streamed answer out."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console

from gptoss_metal.harmony_io import REASONING_EFFORTS

from .errors import handle_user_errors
from .group import Ranks, load_engine, run_command
from .launch import distributed_option, relaunch
from .progress import byte_progress

err = Console(stderr=True, highlight=False)
EFFORTS = click.Choice(list(REASONING_EFFORTS))
DTYPES = click.Choice(["bfloat16", "float32"])


def memory_option(fn):
    """`--max-memory GB`: passed on as bytes (`max_memory`), None for what the machine allows."""
    return click.option(
        "--max-memory", "max_memory", type=click.FloatRange(0, min_open=True), default=None, metavar="GB",
        callback=lambda ctx, param, gb: None if gb is None else int(gb * 2**30),
        help="Memory the model may use, in GiB [default: what the machine allows: Metal's recommended working "
             "set on a Mac, available RAM elsewhere, less the KV budget]. A model that does not fit keeps its "
             "dense weights and a cache of its experts in memory and reads the rest from disk: the same tokens, "
             "slower. `gptoss doctor MODEL` says what it will do.")(fn)


def sampling_options(fn):
    for opt in reversed([
        click.option("--max-tokens", type=click.IntRange(1), default=1024, show_default=True),
        click.option("--temperature", type=click.FloatRange(0.0), default=1.0, show_default=True,
                     help="0 = greedy. OpenAI recommends 1.0 for gpt-oss."),
        click.option("--top-p", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True),
        click.option("--seed", type=int, default=None, help="Reproducible sampling."),
        click.option("--no-speculate", "no_speculate", is_flag=True,
                     help="Turn off prompt-lookup speculative decoding (on by default where it pays)."),
    ]):
        fn = opt(fn)
    return fn


@click.command("generate")
@click.argument("model_path", type=click.Path())
@click.option("-p", "--prompt", required=True, help="The user message.")
@click.option("--system", default=None, help="Instructions (sent as harmony developer instructions).")
@click.option("--effort", type=EFFORTS, default="medium", show_default=True, help="Reasoning effort.")
@click.option("--show-reasoning", is_flag=True, help="Also print the model's reasoning (to stderr).")
@click.option("--dtype", type=DTYPES, default="bfloat16", show_default=True)
@memory_option
@sampling_options
@distributed_option
@handle_user_errors
def generate_cmd(model_path: str, prompt: str, system: str | None, effort: str, show_reasoning: bool, dtype: str,
                 max_memory: int | None, max_tokens: int, temperature: float, top_p: float, seed: int | None,
                 no_speculate: bool, hostfile: str | None) -> None:
    """Answer one PROMPT with the converted model at MODEL_PATH, streaming the final answer to stdout."""
    relaunch(hostfile)
    run_command(lambda ranks: _generate(ranks, model_path, prompt, system, effort, show_reasoning, dtype, max_memory,
                                        max_tokens, temperature, top_p, seed, no_speculate))


def _generate(ranks: Ranks | None, model_path: str, prompt: str, system: str | None, effort: str,
              show_reasoning: bool, dtype: str, max_memory: int | None, max_tokens: int, temperature: float,
              top_p: float, seed: int | None, no_speculate: bool) -> None:
    from gptoss_metal.harmony_io import PreambleDelta, ReasoningDelta, TextDelta, render_prompt, today
    from gptoss_metal.metal_runtime import GenerationStats

    engine = load_engine(ranks, model_path, dtype=dtype, speculate=not no_speculate, max_memory=max_memory)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    tokens = render_prompt(messages, reasoning_effort=effort, current_date=today())
    stats = GenerationStats()
    for ev in engine.stream(tokens, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                            tools=[], stats=stats):  # the prompt declares no tools
        if isinstance(ev, (TextDelta, PreambleDelta)):
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        elif isinstance(ev, ReasoningDelta) and show_reasoning:
            err.print(ev.text, end="", style="dim", markup=False)
    sys.stdout.write("\n")
    err.print(f"[{stats.summary()}; finish: {stats.finish_reason}]", style="cyan", markup=False)


@click.command("demo")
@click.option("--dir", "workdir", type=click.Path(), default=None, help="Keep the demo files here.")
@click.option("--max-tokens", type=click.IntRange(1), default=32, show_default=True)
@handle_user_errors
def demo_cmd(workdir: str | None, max_tokens: int) -> None:
    """End to end on a tiny RANDOM-weight model: synth -> convert -> load -> generate."""
    from gptoss_metal.converters import convert, synth
    from gptoss_metal.harmony_io import STOP_IDS, encoding, render_prompt, today
    from gptoss_metal.metal_runtime import GenerationStats, generate, load

    err.print("[bold yellow]gptoss demo: the weights are RANDOM. The pipeline is real; the text is gibberish "
              "by design.[/]", markup=True)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gptoss-demo-")
        workdir = tmp.name
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        with byte_progress(err) as (start, advance):
            src = synth(root / "tiny-hf", preset="tiny", fmt="hf", seed=0, force=True, on_start=start, on_advance=advance)
            result = convert(src, root / "tiny-runtime", force=True, on_start=start, on_advance=advance)
        err.print(f"1. wrote a synthetic Hugging Face-layout checkpoint: {src}")
        err.print(f"2. converted it to the runtime layout: {result.destination}")
        model = load(result.destination)
        err.print(f"3. loaded it: {model.args.num_hidden_layers} layers, {model.args.num_local_experts} experts, "
                  f"vocab {model.args.vocab_size}")
        prompt = render_prompt([{"role": "user", "content": "Say hello to the Mac."}], reasoning_effort="low",
                               current_date=today())
        err.print(f"4. rendered a harmony prompt ({len(prompt)} tokens); generating {max_tokens} tokens:")
        enc = encoding()
        stats = GenerationStats()
        out: list[int] = []
        for tok in generate(model, prompt, max_tokens=max_tokens, temperature=1.0, seed=0, stop_ids=STOP_IDS,
                            stats=stats):
            out.append(tok)
            sys.stdout.write(enc.decode([tok]))
            sys.stdout.flush()
        sys.stdout.write("\n")
        err.print(f"[prefill {stats.prefill_tps:.1f} tok/s, decode {stats.decode_tps:.1f} tok/s, "
                  f"{len(out)} tokens, finish: {stats.finish_reason}]", style="cyan", markup=False)
        err.print("Done. With real weights: gptoss convert openai/gpt-oss-20b ~/models/gpt-oss-20b && "
                  "gptoss chat ~/models/gpt-oss-20b", markup=False)
    finally:
        if tmp is not None:
            tmp.cleanup()


def register(group: click.Group) -> None:
    group.add_command(generate_cmd)
    group.add_command(demo_cmd)
