"""Compute operations and host graph-build time of one decode step: gptoss vs mlx-lm, any backend.

    python benchmarks/decode_ops.py                          # 20b width, 2 layers, depths 128 and 4096
    python benchmarks/decode_ops.py --layers 24 --depths 128,4096,32768

Both signals are backend-independent, so they can be measured without a GPU: the number of primitive
operations in the graph of one decode step (~ kernel launches on a GPU; views such as reshapes and
slices are not counted) and the host time to build that graph. On the CPU backend MLX expands its
fused `mx.fast` ops (rope, rms_norm, attention) into many primitives; here each is replaced by a
one-op stand-in while counting, so the counts are those a GPU backend sees (timings use the real ops).
Caches are filled with random keys and values to the given depth.
"""

from __future__ import annotations

import argparse
import collections
import io
import re
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).parent))
from depth_compare import backend, ensure_checkpoint  # noqa: E402
from depth_worker import VIEWS, random_kv  # noqa: E402


@contextmanager
def gpu_like_fast_ops():
    """mx.fast.rope / rms_norm / scaled_dot_product_attention as one primitive each (as on a GPU)."""
    f = mx.fast
    saved = f.rope, f.rms_norm, f.scaled_dot_product_attention

    def rope(x, *a, **k):
        return mx.negative(x)

    def rms_norm(x, w, eps):
        return mx.negative(x)

    def sdpa(q, k, v, *, scale, mask=None, sinks=None, **kw):
        deps = [k, v] + ([mask] if isinstance(mask, mx.array) else []) + ([sinks] if sinks is not None else [])
        return mx.depends([mx.negative(q)], deps)[0]

    f.rope, f.rms_norm, f.scaled_dot_product_attention = rope, rms_norm, sdpa
    try:
        yield
    finally:
        f.rope, f.rms_norm, f.scaled_dot_product_attention = saved


def ops(y: mx.array) -> collections.Counter:
    buf = io.StringIO()
    mx.export_to_dot(buf, y)
    return collections.Counter(re.findall(r'\[label ="([^"]+)", shape=rectangle\]', buf.getvalue()))


def compute(c: collections.Counter) -> int:
    return sum(v for k, v in c.items() if k not in VIEWS)


def measure(step, layers: int) -> dict:
    tok = mx.array([[1234]])
    with gpu_like_fast_ops():
        counted = ops(step(tok))
    builds = []
    for _ in range(12):
        t = time.perf_counter()
        y = step(tok)
        builds.append(time.perf_counter() - t)
        mx.eval(y)
    return {"ops": compute(counted), "per_layer": compute(counted) / layers,
            "build_ms": 1e3 * statistics.median(builds[2:]), "kinds": counted}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--depths", default="128,4096")
    ap.add_argument("--vocab", type=int, default=201088)
    ap.add_argument("--workdir", default="benchmarks/.work")
    a = ap.parse_args()
    path = ensure_checkpoint(Path(a.workdir), a.layers, a.vocab)
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load_model

    from gptoss_metal.metal_runtime import load
    from gptoss_metal.metal_runtime.expert_paths import MLXPath

    ours, theirs = load(path), load_model(path)[0]
    # What a GPU runs: the MLX expert path in the model's dtype (the CPU wheel's path casts the expert
    # inputs to float32, two more operations per layer). Only counted.
    ours_gpu = ours if backend() != "cpu" else load(path, experts=MLXPath())
    arch = ours.args
    print(f"\n### one decode step: 20b width, {a.layers} layers, vocab {a.vocab} (+ unembedding and greedy pick)\n")
    print(f"MLX {mx.__version__} ({backend()}); ops counted as a GPU backend sees them.\n")
    print("| depth | compute ops gptoss : mlx-lm | per layer gptoss : mlx-lm | gptoss's GPU path, per layer "
          "| graph build ms gptoss : mlx-lm |")
    print("|---|---|---|---|---|")
    for depth in [int(d) for d in a.depths.split(",")]:
        c_ours = ours.make_cache()
        random_kv(c_ours.layers, arch.num_key_value_heads, arch.head_dim, depth)
        c_theirs = make_prompt_cache(theirs)
        random_kv(c_theirs, arch.num_key_value_heads, arch.head_dim, depth)
        g = measure(lambda t: mx.argmax(ours(t, c_ours)[:, -1, :].astype(mx.float32), axis=-1), a.layers)
        c_gpu = ours_gpu.make_cache()
        random_kv(c_gpu.layers, arch.num_key_value_heads, arch.head_dim, depth)
        with gpu_like_fast_ops():
            g_gpu = compute(ops(mx.argmax(ours_gpu(mx.array([[1234]]), c_gpu)[:, -1, :].astype(mx.float32), axis=-1)))
        m = measure(lambda t: mx.argmax(theirs(t, cache=c_theirs)[:, -1, :], axis=-1), a.layers)
        print(f"| {depth} | {g['ops']} : {m['ops']} | {g['per_layer']:.1f} : {m['per_layer']:.1f} | "
              f"{g_gpu} ({g_gpu / a.layers:.1f}) | {g['build_ms']:.2f} : {m['build_ms']:.2f} |")
    print("\nOperation kinds, gptoss:", dict(g["kinds"].most_common()))
    print("Operation kinds, mlx-lm:", dict(m["kinds"].most_common()))


if __name__ == "__main__":
    main()
