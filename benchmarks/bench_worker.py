"""One measurement in a fresh process (so peak memory is that run's alone); prints one JSON line.

    python benchmarks/bench_worker.py {gptoss|mlx_lm} MODEL_DIR --prompt-tokens N --gen-tokens M [--seed S]

Both engines get the same random prompt ids and decode greedily for exactly M tokens (no stop
tokens), so they do the same work on the same weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx.core as mx
import numpy as np


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_gptoss(path: str, prompt: list[int], gen: int) -> dict:
    from gptoss_metal.metal_runtime import GenerationStats, generate, load

    t = time.perf_counter()
    model = load(path)
    load_s = time.perf_counter() - t
    stats = GenerationStats()
    toks = list(generate(model, prompt, max_tokens=gen, temperature=0.0, stats=stats))
    return {"load_s": load_s, "ttft_s": stats.first_token_seconds, "decode_s": stats.decode_seconds, "tokens": toks}


def run_mlx_lm(path: str, prompt: list[int], gen: int) -> dict:
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler
    from mlx_lm.utils import load_model

    t = time.perf_counter()
    model, _ = load_model(Path(path))
    load_s = time.perf_counter() - t
    toks = []
    t0 = time.perf_counter()
    t_first = None
    for tok, _ in generate_step(mx.array(prompt), model, max_tokens=gen, sampler=make_sampler(temp=0.0)):
        toks.append(int(tok))
        if t_first is None:
            t_first = time.perf_counter()
    t_end = time.perf_counter()
    return {"load_s": load_s, "ttft_s": t_first - t0, "decode_s": t_end - t_first, "tokens": toks}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine", choices=["gptoss", "mlx_lm"])
    ap.add_argument("model")
    ap.add_argument("--prompt-tokens", type=int, required=True)
    ap.add_argument("--gen-tokens", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    prompt = np.random.default_rng(a.seed).integers(0, 199_998, a.prompt_tokens).tolist()
    r = (run_gptoss if a.engine == "gptoss" else run_mlx_lm)(a.model, prompt, a.gen_tokens)
    r.update(engine=a.engine, prompt_tokens=a.prompt_tokens, gen_tokens=a.gen_tokens, peak_rss=peak_rss(),
             prefill_tps=a.prompt_tokens / r["ttft_s"], decode_tps=(a.gen_tokens - 1) / r["decode_s"])
    print(json.dumps(r))


if __name__ == "__main__":
    main()
