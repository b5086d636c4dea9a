"""One engine, one context depth, in a fresh process (its peak memory is this run's alone); one JSON line.

    python benchmarks/depth_worker.py {gptoss|mlx_lm} MODEL_DIR --depth D --gen-tokens N [--real-prefill]

With --real-prefill the engine prefills a D-token prompt (its prefill tok/s is measured) and then
decodes N tokens greedily. Without it (a CPU can't prefill 32k tokens of 20b width in reasonable time)
both engines' caches are filled with the same random keys and values for D positions, and only decode
at that depth is measured. Also reported: host graph-build time and compute ops of one decode step.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import re
import statistics
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

VIEWS = {"Broadcast", "Reshape", "Squeeze", "ExpandDims", "Slice", "Transpose", "AsStrided", "StopGradient",
         "Depends", "Unflatten", "Flatten"}


def peak_memory() -> dict:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    out["peak_rss"] = int(line.split()[1]) * 1024
    except OSError:
        import resource

        out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mx.default_device().type != mx.DeviceType.cpu:
        out["peak_device"] = mx.get_peak_memory()
    return out


def compute_ops(y: mx.array) -> int:
    """Non-view primitives in the graph of `y` (~ kernel launches on a GPU)."""
    buf = io.StringIO()
    mx.export_to_dot(buf, y)
    labels = re.findall(r'\[label ="([^"]+)", shape=rectangle\]', buf.getvalue())
    return sum(v for k, v in collections.Counter(labels).items() if k not in VIEWS)


def random_kv(layers, heads: int, dim: int, depth: int, chunk: int = 1024) -> None:
    key = mx.random.key(0)
    for start in range(0, depth, chunk):
        n = min(chunk, depth - start)
        for c in layers:
            k = mx.random.normal((1, heads, n, dim), key=key).astype(mx.bfloat16)
            c.update_and_fetch(k, k)
        mx.eval([a for c in layers for a in (c.keys, c.values)])


def step_timing(step, first: mx.array, n: int) -> dict:
    """Graph build (host) time, ops and wall time per decode step, not pipelined (to separate them)."""
    tok, builds, ops = first, [], 0
    for i in range(n):
        t0 = time.perf_counter()
        y = step(tok)
        builds.append(time.perf_counter() - t0)
        if i == 0:
            ops = compute_ops(y)
        mx.eval(y)
        tok = y.reshape(1, 1)
    return {"build_ms": 1e3 * statistics.median(builds[1:] or builds), "step_ops": ops}


def run_gptoss(path: str, depth: int, gen: int, real: bool, prompt: list[int]) -> dict:
    from gptoss_metal.metal_runtime import GenerationStats, generate, load

    t = time.perf_counter()
    model = load(path)
    res: dict = {"load_s": time.perf_counter() - t}
    cache = model.make_cache()
    if real:
        stats = GenerationStats()
        toks = list(generate(model, prompt, max_tokens=gen, temperature=0.0, cache=cache, stats=stats,
                             speculate=False))
        res.update(prefill_tps=depth / stats.first_token_seconds, decode_tps=stats.decode_tps, tokens=toks)
    else:
        a = model.args
        random_kv(cache.layers, a.num_key_value_heads, a.head_dim, depth)
        stats = GenerationStats()
        toks = list(generate(model, [1234], max_tokens=gen, temperature=0.0, cache=cache, stats=stats,
                             speculate=False))
        res.update(prefill_tps=None, decode_tps=stats.decode_tps, tokens=toks)
    step = lambda tok: mx.argmax(model(tok, cache)[:, -1, :].astype(mx.float32), axis=-1)  # noqa: E731
    res.update(step_timing(step, mx.array([[toks[-1]]]), 6))
    return res


def run_mlx_lm(path: str, depth: int, gen: int, real: bool, prompt: list[int]) -> dict:
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import make_sampler
    from mlx_lm.utils import load_model

    t = time.perf_counter()
    model, _ = load_model(Path(path))
    res: dict = {"load_s": time.perf_counter() - t}
    cache = make_prompt_cache(model)
    if not real:
        a = model.args
        random_kv(cache, a.num_key_value_heads, a.head_dim, depth)
        prompt = [1234]
    toks, t_first = [], None
    t0 = time.perf_counter()
    for tok, _ in generate_step(mx.array(prompt), model, max_tokens=gen, sampler=make_sampler(temp=0.0),
                                prompt_cache=cache):
        toks.append(int(tok))
        if t_first is None:
            t_first = time.perf_counter()
    t_end = time.perf_counter()
    res.update(prefill_tps=depth / (t_first - t0) if real else None,
               decode_tps=(gen - 1) / (t_end - t_first), tokens=toks)
    step = lambda tok: mx.argmax(model(tok, cache=cache)[:, -1, :], axis=-1)  # noqa: E731
    res.update(step_timing(step, mx.array([[toks[-1]]]), 6))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine", choices=["gptoss", "mlx_lm"])
    ap.add_argument("model")
    ap.add_argument("--depth", type=int, required=True)
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--real-prefill", action="store_true")
    ap.add_argument("--vocab", type=int, default=199_998)
    a = ap.parse_args()
    prompt = np.random.default_rng(a.depth).integers(0, min(a.vocab, 199_998), a.depth).tolist()
    run = run_gptoss if a.engine == "gptoss" else run_mlx_lm
    r = run(a.model, a.depth, a.gen_tokens, a.real_prefill, prompt)
    r.update(engine=a.engine, depth=a.depth, **peak_memory())
    print(json.dumps(r))


if __name__ == "__main__":
    main()
