"""One decode step of a gpt-oss MoE layer: MLX operations on the twin path vs the kernel path,
and the bytes the expert path reads per token.

    python benchmarks/kernel_ops.py [--preset 20b|120b] [--tokens 1]

Counts the primitive nodes of the lazy graph (each is at least one launch on Metal) for
router + experts of one layer. The kernel path is traced inside `mx.export_function`, which works
without Metal (the kernels are recorded, not run), so the count is exact on any machine.
"""

from __future__ import annotations

import argparse
import collections
import io
import re
import tempfile

import mlx.core as mx

from gptoss_metal.converters import PRESETS
from gptoss_metal.metal_runtime.kernels.runtime import KernelSet, metal_executor
from gptoss_metal.metal_runtime.kernels.twins import route_twin, twin_experts
from gptoss_metal.metal_runtime.experts import SwitchMXFP4GLU


VIEWS = {"Broadcast", "ExpandDims", "Squeeze", "Reshape", "Transpose", "Slice", "AsStrided", "Copy"}


def launches(c: collections.Counter) -> int:
    """Operations that run a kernel (views and reshapes do not)."""
    return sum(n for op, n in c.items() if op not in VIEWS)


def count_ops(*arrays: mx.array) -> collections.Counter:
    f = io.StringIO()
    mx.export_to_dot(f, *arrays)
    return collections.Counter(re.findall(r'label ="([^"]+)", shape=rectangle', f.getvalue()))


def layer(e: int, h: int, i: int) -> SwitchMXFP4GLU:
    m = SwitchMXFP4GLU(e, h, i, limit=7.0, alpha=1.702)
    m.set_dtype(mx.bfloat16)  # biases in the model's dtype, as loaded
    mx.eval(m.parameters())
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="20b", choices=sorted(PRESETS))
    ap.add_argument("--tokens", type=int, default=1)
    args = ap.parse_args()
    a = PRESETS[args.preset]
    e, h, i, k = a.num_local_experts, a.hidden_size, a.intermediate_size, a.num_experts_per_tok
    m = layer(e, h, i)
    x = mx.zeros((args.tokens, h), dtype=mx.bfloat16)
    logits = mx.zeros((args.tokens, e), dtype=mx.bfloat16)
    mx.eval(x, logits)

    idx, w = route_twin(logits, k)
    twin = count_ops(twin_experts(x, idx, w, m))

    ks = KernelSet(executor=metal_executor, mode="on")
    kernel_counts: dict[str, collections.Counter] = {}

    def traced(x, logits):
        kidx, kw = ks._router_call(logits, k)
        y = ks._experts_call(x, kidx, kw, m, x.dtype)
        kernel_counts["ops"] = count_ops(y)
        return y

    with tempfile.TemporaryDirectory() as d:
        mx.export_function(f"{d}/step.mlxfn", traced, x, logits)
    kern = kernel_counts["ops"]

    per_expert = sum(p.weight.nbytes + p.scales.nbytes + p.bias.nbytes for p in (m.gate_proj, m.up_proj, m.down_proj)) / e
    print(f"preset {args.preset}: E={e}, H={h}, I={i}, top-{k}, {args.tokens} token(s), one layer")
    print(f"twin path (router + experts): {sum(twin.values())} MLX operations, {launches(twin)} of them launch "
          f"kernels: {dict(twin.most_common())}")
    print(f"kernel path:                  {sum(kern.values())} MLX operations, {launches(kern)} launches: "
          f"{dict(kern.most_common())}")
    print(f"expert bytes read per token per layer: {k * per_expert / 1e6:.1f} MB "
          f"({a.num_hidden_layers * k * per_expert / 1e9:.2f} GB per token over {a.num_hidden_layers} layers)")


if __name__ == "__main__":
    main()
