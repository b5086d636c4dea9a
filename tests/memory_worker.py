"""A child process for the memory-cap tests and benchmark: load a model, generate, report as JSON.

Run alone or inside a memory cgroup (tests/memory_cap.py puts only this process in it). Prints one
JSON line: the greedy and seeded tokens, the cache's counters and plan, timings, peak memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--experts", default="auto")
    ap.add_argument("--prompt-tokens", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--max-memory-gib", type=float, default=None, help="default: what the machine (cgroup) allows")
    ap.add_argument("--slots", type=int, default=None, help="force a cache of this many slots per layer")
    ap.add_argument("--segment", type=int, default=None)
    ap.add_argument("--policy", default="lfu")
    ap.add_argument("--prefetch", action="store_true", help="read the next layer's predicted experts ahead")
    ap.add_argument("--keep-page-cache", action="store_true")
    ap.add_argument("--runs", default="greedy,seeded")
    ap.add_argument("--trace", default=None, help="write each layer's routed experts of the first run (.npz)")
    a = ap.parse_args()

    import mlx.core as mx
    import numpy as np

    from gptoss_metal.metal_runtime import GenerationStats, generate, load
    from gptoss_metal.metal_runtime.bench import peak_rss_bytes
    from gptoss_metal.metal_runtime.expert_cache import CacheSettings
    from gptoss_metal.metal_runtime.loading import memory_plan

    t0 = time.perf_counter()
    max_memory = None if a.max_memory_gib is None else int(a.max_memory_gib * 2**30)
    plan = memory_plan(a.model, a.dtype, max_memory)  # in a cgroup: what its limit leaves
    slots, segment = (a.slots, a.segment or a.slots) if a.slots is not None else (plan.slots, plan.segment)
    settings = None if not slots else CacheSettings(slots, segment, a.policy, a.prefetch, a.keep_page_cache)
    model = load(a.model, dtype=a.dtype, experts=a.experts, expert_cache=settings, max_memory=max_memory)
    load_s = time.perf_counter() - t0
    cache = model.expert_cache
    prompt = np.random.default_rng(0).integers(0, min(model.args.vocab_size, 199_990), a.prompt_tokens).tolist()
    trace = _Trace(model) if a.trace else None
    out: dict = {"load_s": load_s, "cached": cache is not None}
    if cache is not None:
        out["slots"], out["segment"] = cache.settings.slots, cache.settings.segment
    for run in a.runs.split(","):
        options = {"temperature": 0.0} if run == "greedy" else {"temperature": 1.0, "seed": 7}
        if cache is not None:
            cache.stats = type(cache.stats)()
        stats = GenerationStats()
        out[run] = list(generate(model, prompt, max_tokens=a.tokens, stats=stats, **options))
        if trace is not None:
            trace.save(a.trace)
            trace = None
        out[f"{run}_decode_tps"] = stats.decode_tps
        out[f"{run}_prefill_s"] = stats.prefill_seconds
        if cache is not None:
            s = cache.stats.to_dict()
            steps = max(1, s["decode_calls"] // model.args.num_hidden_layers)
            out[f"{run}_cache"] = {**s, "decode_steps": steps, "disk_bytes_per_token": s["decode_bytes"] / steps}
    out["peak_rss_bytes"] = peak_rss_bytes()
    out["mlx_peak_bytes"] = mx.get_peak_memory()
    print(json.dumps(out), flush=True)


class _Trace:
    """Records the experts every MoE layer routes to (one host sync per layer): decode steps (one
    token) as [steps, layers, k], and how often each expert served prefill, per layer."""

    def __init__(self, model):
        import numpy as np

        self.np, self.layers = np, model.args.num_hidden_layers
        self.decode: list = []
        self.prefill = np.zeros((self.layers, model.args.num_local_experts), dtype=np.int64)
        self.calls = 0
        for layer in model.layers:
            layer.mlp.path = _Recording(layer.mlp.path, self)

    def record(self, ids) -> None:
        layer = self.calls % self.layers
        self.calls += 1
        if ids.shape[0] == 1:
            if layer == 0:
                self.decode.append([])
            self.decode[-1].append(ids[0])
        else:
            self.prefill[layer] += self.np.bincount(ids.reshape(-1), minlength=self.prefill.shape[1])

    def save(self, path: str) -> None:
        self.np.savez(path, decode=self.np.array(self.decode), prefill=self.prefill)


class _Recording:
    def __init__(self, inner, trace: _Trace):
        self.inner, self.trace, self.name = inner, trace, inner.name

    def route(self, logits, k):
        import numpy as np

        idx, w = self.inner.route(logits, k)
        self.trace.record(np.array(idx))
        return idx, w

    def experts(self, *args, **kwargs):
        return self.inner.experts(*args, **kwargs)


if __name__ == "__main__":
    main()
