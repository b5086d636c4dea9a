"""What `--quantize-dense q8|q4` costs in accuracy and saves in bytes per decoded token.

    python benchmarks/quantize_dense_error.py --preset small [--workdir DIR] [--tokens 64]

Converts one synthetic checkpoint three ways (bf16 dense, q8, q4), runs the same tokens through
each (float32 activations, so only the weight quantization differs) and reports:
- the weights' own relative quantization error (what MLX affine quantization with group 64 gives),
- the logits' relative RMS error, max |diff|, top-1 agreement and mean KL(bf16 || quantized),
- bytes read per decoded token of each.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

from gptoss_metal.converters import inspect_checkpoint
from gptoss_metal.metal_runtime import load


def build(workdir: Path, preset: str) -> dict[str, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / f"{preset}-hf"
    cli = [sys.executable, "-m", "gptoss_metal.cli.main"]
    if not src.exists():
        subprocess.run(cli + ["synth", str(src), "--preset", preset, "--format", "hf", "--quiet"], check=True)
    out = {}
    for kind in ("bf16", "q8", "q4"):
        dst = workdir / f"{preset}-runtime-{kind}"
        if not dst.exists():
            extra = [] if kind == "bf16" else ["--quantize-dense", kind]
            subprocess.run(cli + ["convert", str(src), str(dst), "--quiet"] + extra, check=True)
        out[kind] = dst
    return out


def weight_error(bf16: Path, quant: Path, module: str, bits: int) -> float:
    w = load(bf16, dtype="float32")
    q = load(quant, dtype="float32")
    ref = dict(__import__("mlx.nn", fromlist=["utils"]).utils.tree_flatten(w.parameters()))[f"{module}.weight"]
    p = dict(__import__("mlx.nn", fromlist=["utils"]).utils.tree_flatten(q.parameters()))
    deq = mx.dequantize(p[f"{module}.weight"], p[f"{module}.scales"], p[f"{module}.biases"], group_size=64, bits=bits)
    return float(mx.sqrt(((deq - ref) ** 2).sum() / (ref**2).sum()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--workdir", default="benchmarks/.work")
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()
    dirs = build(Path(a.workdir), a.preset)
    tokens = mx.array([np.random.default_rng(0).integers(0, 199_998, a.tokens).tolist()])
    logits = {}
    for kind, d in dirs.items():
        logits[kind] = np.array(load(d, dtype="float32")(tokens)[0].astype(mx.float32), dtype=np.float64)
    ref = logits["bf16"]
    print(f"preset {a.preset}, {a.tokens} tokens, float32 activations\n")
    print("| dense weights | bytes / decoded token | weight rel. error (q_proj, lm_head) | logits rel. RMS error | "
          "max abs diff | top-1 agreement | mean KL(bf16 ‖ q) |")
    print("|---|---|---|---|---|---|---|")
    for kind, d in dirs.items():
        bpt = inspect_checkpoint(d).bytes_per_token
        if kind == "bf16":
            print(f"| bf16 | {bpt / 1e9:.3f} GB | - | - | - | - | - |")
            continue
        bits = int(kind[1:])
        we = (weight_error(dirs["bf16"], d, "model.layers.0.self_attn.q_proj", bits),
              weight_error(dirs["bf16"], d, "lm_head", bits))
        diff = logits[kind] - ref
        rel = np.sqrt((diff**2).sum() / (ref**2).sum())
        top1 = float((logits[kind].argmax(-1) == ref.argmax(-1)).mean())
        p = np.exp(ref - ref.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        lq = logits[kind] - logits[kind].max(-1, keepdims=True)
        lq = lq - np.log(np.exp(lq).sum(-1, keepdims=True))
        lp = np.log(p)
        kl = float((p * (lp - lq)).sum(-1).mean())
        print(f"| {kind} | {bpt / 1e9:.3f} GB | {we[0]:.2e}, {we[1]:.2e} | {rel:.2e} | {np.abs(diff).max():.3f} | "
              f"{top1:.3f} | {kl:.2e} |")


if __name__ == "__main__":
    main()
