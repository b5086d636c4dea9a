"""gptoss vs mlx-lm on the same synthetic checkpoint, alternating, in one run; medians and ratios.

    python benchmarks/compare_mlx_lm.py --preset 20b --workdir /path/with/30GB --rounds 3 \
        --prompt-tokens 15 --gen-tokens 6
    python benchmarks/compare_mlx_lm.py --preset small --rounds 5     # quick

Builds the checkpoint with `gptoss synth --format hf` (real 20b shapes for --preset 20b) and
converts it with `gptoss convert`, unless they exist in the workdir. mlx-lm loads the converted
folder (the MLX gpt_oss layout it reads natively), gptoss the same folder. Each measurement is a
fresh process (bench_worker.py), engines alternate every round, and both decode greedily from the
same prompt ids. Prints a markdown table for BENCHMARKS.md with machine and versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).parent


def ensure_checkpoint(workdir: Path, preset: str) -> tuple[Path, dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    src, dst = workdir / f"{preset}-hf", workdir / f"{preset}-runtime"
    info: dict = {}
    gptoss = [sys.executable, "-m", "gptoss_metal.cli.main"]
    if not src.exists():
        t = time.perf_counter()
        subprocess.run(gptoss + ["synth", str(src), "--preset", preset, "--format", "hf", "--quiet"], check=True)
        info["synth_s"] = time.perf_counter() - t
    if not dst.exists():
        t = time.perf_counter()
        subprocess.run(gptoss + ["convert", str(src), str(dst), "--quiet"], check=True)
        info["convert_s"] = time.perf_counter() - t
    return dst, info


def measure(engine: str, model: Path, prompt: int, gen: int, seed: int) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "bench_worker.py"), engine, str(model), "--prompt-tokens",
                          str(prompt), "--gen-tokens", str(gen), "--seed", str(seed)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--workdir", default="benchmarks/.work")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--json", default=None, help="also write all measurements here")
    a = ap.parse_args()
    model, build = ensure_checkpoint(Path(a.workdir), a.preset)
    runs: dict[str, list[dict]] = {"mlx_lm": [], "gptoss": []}
    for r in range(a.rounds):
        order = ["mlx_lm", "gptoss"] if r % 2 == 0 else ["gptoss", "mlx_lm"]
        for engine in order:
            res = measure(engine, model, a.prompt_tokens, a.gen_tokens, seed=r)
            runs[engine].append(res)
            print(f"round {r + 1} {engine}: prefill {res['prefill_tps']:.3f} tok/s, decode {res['decode_tps']:.3f} "
                  f"tok/s, peak RSS {res['peak_rss'] / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    med = {e: {k: statistics.median(x[k] for x in v) for k in ("prefill_tps", "decode_tps", "ttft_s", "peak_rss")}
           for e, v in runs.items()}
    same_tokens = [g["tokens"] == m["tokens"] for g, m in zip(runs["gptoss"], runs["mlx_lm"])]
    try:
        import mlx.core as mx

        backend = "cpu" if mx.default_device().type == mx.DeviceType.cpu else "gpu"
    except Exception:  # noqa: BLE001
        backend = "?"
    g, m = med["gptoss"], med["mlx_lm"]
    print(f"\n### {a.preset} preset, {a.prompt_tokens}-token prompt, {a.gen_tokens} generated tokens, "
          f"{a.rounds} rounds (medians)\n")
    print(f"Machine: {platform.system()} {platform.machine()}, {platform.processor() or 'cpu'}; MLX {version('mlx')} "
          f"({backend}), mlx-lm {version('mlx-lm')}, Python {platform.python_version()}.\n")
    print("| metric | mlx-lm | gptoss | ratio (gptoss / mlx-lm) |")
    print("|---|---|---|---|")
    print(f"| prefill tok/s | {m['prefill_tps']:.3f} | {g['prefill_tps']:.3f} | {g['prefill_tps'] / m['prefill_tps']:.2f}x |")
    print(f"| decode tok/s | {m['decode_tps']:.3f} | {g['decode_tps']:.3f} | {g['decode_tps'] / m['decode_tps']:.2f}x |")
    print(f"| time to first token s | {m['ttft_s']:.2f} | {g['ttft_s']:.2f} | {g['ttft_s'] / m['ttft_s']:.2f}x |")
    print(f"| peak RSS GiB | {m['peak_rss'] / 2**30:.2f} | {g['peak_rss'] / 2**30:.2f} | "
          f"{g['peak_rss'] / m['peak_rss']:.2f}x |")
    print(f"\nGreedy tokens identical between engines in {sum(same_tokens)}/{len(same_tokens)} rounds "
          "(random weights make greedy decoding sensitive to numerics: mlx-lm rounds the YaRN correction range and "
          "keeps RMSNorm gains in bf16; exactness is checked against the float64 reference in the tests).")
    if build:
        print(f"Checkpoint build: {json.dumps({k: round(v, 1) for k, v in build.items()})}")
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": runs, "medians": med, "build": build}, indent=1))


if __name__ == "__main__":
    main()
