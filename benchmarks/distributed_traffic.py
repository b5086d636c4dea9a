"""What expert parallelism exchanges per token, counted, and what it could mean for decode on two Macs.

    python benchmarks/distributed_traffic.py [--model DIR] [--ranks 2]

1. Counted: the collectives one decode step and one 512-token prefill chunk issue, and their bytes,
   by wrapping `mx.distributed.all_sum` around a real expert-parallel model (a one-process group
   playing rank 0 of --ranks; the graph is what every rank builds).
2. From the architecture: bytes per token and layer for 20b and 120b, and a ring all-reduce's traffic.
3. A projection (NOT a measurement: no Mac, no Thunderbolt link here): decode ceilings of 120b on two
   Macs = bandwidth-bound compute of the busiest rank + one collective latency per MoE layer and token.
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
from pathlib import Path

import mlx.core as mx

from gptoss_metal.architecture import Architecture
from gptoss_metal.converters import convert, synth
from gptoss_metal.converters.presets import PRESETS
from gptoss_metal.metal_runtime.bench import APPLE_BANDWIDTH_GBS
from gptoss_metal.metal_runtime.distributed import BroadcastSampler, DistributedGroup, load_expert_parallel

LATENCIES_US = (600, 100, 20)  # per collective: TCP ring (2 x ~300 us), RDMA (2 x < 50 us), an optimistic floor
CHIPS = ("M4 Pro", "M4 Max (40-core GPU)", "M3 Ultra")


def count_collectives(model_dir: Path, ranks: int) -> dict[str, tuple[int, int]]:
    """(collectives, bytes of their inputs) for one decode step and one 512-token prefill chunk."""
    group = DistributedGroup(0, ranks, "ring", mx.distributed.init())  # all_sum of one process: identity
    model = load_expert_parallel(model_dir, group, dtype="bfloat16")
    seen: list[int] = []
    real = mx.distributed.all_sum

    def counting(x, *args, **kwargs):
        seen.append(x.nbytes)
        return real(x, *args, **kwargs)

    mx.distributed.all_sum = counting
    try:
        out = {}
        cache = model.make_cache()
        model(mx.array([[1] * 8]), cache)
        seen.clear()
        mx.eval(BroadcastSampler(group, 0.0)(model(mx.array([[2]]), cache)[:, -1, :]))
        out["decode step (1 token)"] = (len(seen), sum(seen))
        seen.clear()
        mx.eval(model(mx.array([[3] * 512]), model.make_cache()))
        out["prefill chunk (512 tokens)"] = (len(seen), sum(seen))
    finally:
        mx.distributed.all_sum = real
    return out


def expected_busiest(arch: Architecture, ranks: int) -> float:
    """E[max over ranks of the experts a token routes to that rank] (k picks without replacement)."""
    sizes = [last - first for first, last in arch.expert_split(ranks)]
    k, total = arch.num_experts_per_tok, math.comb(arch.num_local_experts, arch.num_experts_per_tok)
    exp = 0.0
    for counts in itertools.product(range(k + 1), repeat=ranks):
        if sum(counts) == k:
            exp += max(counts) * math.prod(math.comb(s, c) for s, c in zip(sizes, counts)) / total
    return exp


def per_token_bytes(arch: Architecture, experts_read: float) -> float:
    """Weight bytes a decode step reads: dense once (one embedding row), `experts_read` experts per layer."""
    b = arch.stored_bytes()
    embedding = 2 * arch.vocab_size * arch.hidden_size
    dense = b.dense - embedding + 2 * arch.hidden_size
    per_expert = b.experts / (arch.num_hidden_layers * arch.num_local_experts)
    return dense + arch.num_hidden_layers * experts_read * per_expert


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a converted model (default: a tiny synthetic one)")
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or convert(synth(Path(tmp) / "hf", preset="tiny", fmt="hf"), Path(tmp) / "rt").destination
        arch_tiny = PRESETS["tiny"] if args.model is None else None
        print(f"1. counted on {model if args.model else 'the tiny preset'} "
              f"(H={arch_tiny.hidden_size if arch_tiny else '?'}), as rank 0 of {args.ranks}:")
        for what, (n, nbytes) in count_collectives(model, args.ranks).items():
            print(f"   {what}: {n} collectives, {nbytes} bytes in")

    print("\n2. per token and MoE layer (one all_sum of H float32 partial sums):")
    for name in ("20b", "120b"):
        a = PRESETS[name]
        layer = 4 * a.hidden_size
        token = a.num_hidden_layers * layer + 4
        print(f"   {name}: {layer} B per layer, {token / 1024:.1f} KiB per decoded token "
              f"({a.num_hidden_layers + 1} collectives: one per layer + the token); ring all-reduce sends "
              f"2(N-1)/N of it per rank: {token * 2 * (args.ranks - 1) / args.ranks / 1024:.1f} KiB at N={args.ranks}; "
              f"prefill {512 * layer / 1e6:.1f} MB per layer per 512-token chunk")

    a = PRESETS["120b"]
    one = per_token_bytes(a, a.num_experts_per_tok)
    busiest = expected_busiest(a, args.ranks)
    split = per_token_bytes(a, busiest)
    collectives = a.num_hidden_layers + 1
    print(f"\n3. PROJECTION, 120b on {args.ranks} Macs (upper bounds from bandwidth; not measured):")
    print(f"   weight bytes per token: one Mac {one / 1e9:.2f} GB; busiest rank {split / 1e9:.2f} GB "
          f"(reads {busiest:.2f} of {a.num_experts_per_tok} experts per layer on average)")
    head = ["chip", "1 Mac", f"EP x{args.ranks}, no comm"] + [f"+{us} us/collective" for us in LATENCIES_US]
    print("   | " + " | ".join(head) + " |")
    print("   |" + "---|" * len(head))
    for chip in CHIPS:
        bw = APPLE_BANDWIDTH_GBS[chip] * 1e9
        t = split / bw
        row = [chip, f"{bw / one:.0f}", f"{1 / t:.0f}"] + [f"{1 / (t + collectives * us * 1e-6):.0f}" for us in LATENCIES_US]
        print("   | " + " | ".join(row) + " |")
    attention = per_token_bytes(a, 0) - 2 * a.hidden_size * a.vocab_size  # dense minus the unembedding
    saved = attention * (args.ranks - 1) / args.ranks / (APPLE_BANDWIDTH_GBS["M4 Max (40-core GPU)"] * 1e9)
    print(f"   head-split attention would read {attention * (args.ranks - 1) / args.ranks / 1e9:.2f} GB less per token "
          f"({saved * 1e3:.2f} ms on an M4 Max) for {a.num_hidden_layers} more collectives: it pays below "
          f"{saved / a.num_hidden_layers * 1e6:.0f} us per collective")


if __name__ == "__main__":
    main()
