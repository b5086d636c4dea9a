"""gptoss vs mlx-lm at several context depths on the same 20b-shaped checkpoint: ratios in one run.

    python benchmarks/depth_compare.py                      # whatever MLX backend is present
    python benchmarks/depth_compare.py --depths 128,4096,32768 --layers 24 --rounds 3     # a GPU
    python benchmarks/depth_compare.py --layers 4 --vocab 32000 --depths 16 --real-prefill-max 16  # CPU

The checkpoint has gpt-oss-20b's width (hidden 2880, 32 experts, 64 heads) with `--layers` layers
(default: all 24 on a GPU, 2 on the CPU so it finishes) and `--vocab` entries, written by our
synthetic writer in the Hugging Face layout and converted; both engines load the converted folder.
For each depth, each engine runs in a fresh process (engines alternate every round): it prefills a
prompt of that many tokens (up to --real-prefill-max; beyond that both caches are filled with the
same random keys and values, so decode at that depth is still measured), then decodes greedily.
Prints medians and ratios (gptoss / mlx-lm) of prefill tok/s, decode tok/s, peak memory, and the
host graph-build time and compute ops of one decode step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import mlx.core as mx

HERE = Path(__file__).parent


def backend() -> str:
    if mx.default_device().type == mx.DeviceType.cpu:
        return "cpu"
    return "metal" if mx.metal.is_available() else "cuda"


def ensure_checkpoint(workdir: Path, layers: int, vocab: int, preset: str = "20b", seed: int = 0) -> Path:
    """A `preset`-width checkpoint with `layers` layers and `vocab` entries (built once in `workdir`)."""
    from gptoss_metal.converters import PRESETS, convert, synth

    workdir.mkdir(parents=True, exist_ok=True)
    name = f"w{preset}-L{layers}-V{vocab}" + (f"-S{seed}" if seed else "")
    src, dst = workdir / f"{name}-hf", workdir / f"{name}-rt"
    if not dst.exists():
        arch = dataclasses.replace(PRESETS[preset], num_hidden_layers=layers, vocab_size=vocab, layer_types=())
        if not src.exists():
            synth(src, arch=arch, fmt="hf", seed=seed)
        convert(src, dst)
    return dst


def measure(engine: str, model: Path, depth: int, gen: int, real: bool, vocab: int) -> dict:
    cmd = [sys.executable, str(HERE / "depth_worker.py"), engine, str(model), "--depth", str(depth),
           "--gen-tokens", str(gen), "--vocab", str(vocab)] + (["--real-prefill"] if real else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def med(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def main() -> None:
    gpu = backend() != "cpu"
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", default="128,4096,32768")
    ap.add_argument("--layers", type=int, default=24 if gpu else 2)
    ap.add_argument("--vocab", type=int, default=201088)
    ap.add_argument("--gen-tokens", type=int, default=32 if gpu else 8)
    ap.add_argument("--rounds", type=int, default=3 if gpu else 2)
    ap.add_argument("--real-prefill-max", type=int, default=32768 if gpu else 128)
    ap.add_argument("--workdir", default="benchmarks/.work")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.layers < 2:
        ap.error("--layers must be at least 2 (mlx-lm needs a full-attention layer)")
    model = ensure_checkpoint(Path(a.workdir), a.layers, a.vocab)
    depths = [int(d) for d in a.depths.split(",")]
    results: dict = {}
    for depth in depths:
        real = depth <= a.real_prefill_max
        runs: dict[str, list[dict]] = {"gptoss": [], "mlx_lm": []}
        for r in range(a.rounds):
            for engine in (["mlx_lm", "gptoss"] if r % 2 == 0 else ["gptoss", "mlx_lm"]):
                res = measure(engine, model, depth, a.gen_tokens, real, a.vocab)
                runs[engine].append(res)
                print(f"depth {depth} round {r + 1} {engine}: prefill {res['prefill_tps']} decode "
                      f"{res['decode_tps']:.3f} tok/s, build {res['build_ms']:.2f} ms, ops {res['step_ops']}",
                      file=sys.stderr, flush=True)
        results[depth] = (real, runs)
    mem = "peak_device" if gpu else "peak_rss"
    print(f"\n### depth comparison: 20b width, {a.layers} layers, vocab {a.vocab}, {a.gen_tokens} decoded tokens, "
          f"{a.rounds} rounds (medians)\n")
    print(f"Machine: {platform.system()} {platform.machine()}; MLX {mx.__version__} ({backend()}), mlx-lm "
          f"{version('mlx-lm')}, Python {platform.python_version()}.\n")
    print("| depth | prefill tok/s gptoss : mlx-lm | decode tok/s gptoss : mlx-lm | peak memory GiB gptoss : mlx-lm "
          "| step build ms gptoss : mlx-lm | step ops gptoss : mlx-lm |")
    print("|---|---|---|---|---|---|")
    for depth, (real, runs) in results.items():
        g, m = runs["gptoss"], runs["mlx_lm"]
        gp, mp = med(g, "prefill_tps"), med(m, "prefill_tps")
        pre = f"{gp:.1f} : {mp:.1f} ({ratio(gp, mp)})" if real else "not measured (random KV fill)"
        gd, md = med(g, "decode_tps"), med(m, "decode_tps")
        gm, mm = med(g, mem) / 2**30, med(m, mem) / 2**30
        gb, mb = med(g, "build_ms"), med(m, "build_ms")
        print(f"| {depth} | {pre} | {gd:.2f} : {md:.2f} ({ratio(gd, md)}) | {gm:.2f} : {mm:.2f} ({ratio(gm, mm)}) | "
              f"{gb:.2f} : {mb:.2f} | {med(g, 'step_ops'):.0f} : {med(m, 'step_ops'):.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({str(k): v[1] for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
