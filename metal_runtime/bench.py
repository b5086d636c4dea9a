"""Measuring a loaded model: speed, memory, bytes read per decoded token, Apple-chip projections.

Absolute Apple figures are never claimed: they are projected from bytes read per decoded token
and each chip's memory bandwidth (decode of a model this size is bandwidth-bound).
"""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from gptoss_metal import architecture

from .generate import generate
from .sequence import GenerationStats
from .model import Model

# Unified-memory bandwidth in GB/s from Apple's published specifications (apple.com tech specs
# and newsroom announcements). Binned variants with less bandwidth are listed separately.
APPLE_BANDWIDTH_GBS: dict[str, float] = {
    "M1": 68.25, "M1 Pro": 200, "M1 Max": 400, "M1 Ultra": 800,
    "M2": 100, "M2 Pro": 200, "M2 Max": 400, "M2 Ultra": 800,
    "M3": 100, "M3 Pro": 150, "M3 Max (30-core GPU)": 300, "M3 Max (40-core GPU)": 400, "M3 Ultra": 819,
    "M4": 120, "M4 Pro": 273, "M4 Max (32-core GPU)": 410, "M4 Max (40-core GPU)": 546,
    "M5": 153,
}

# Apple's published SSD read rate ("up to", the 2021 MacBook Pro and 2022 Mac Studio announcements): the
# parameter of the bigger-than-memory projections. Apple publishes no rate for other Macs; smaller SSDs of
# base models read more slowly.
APPLE_SSD_READ_GBS = 7.4


@dataclass
class BytesPerToken:
    weights: int  # weight bytes one decode step reads
    kv: int  # KV-cache bytes read at the given context depth
    context: int

    @property
    def total(self) -> int:
        return self.weights + self.kv


def bytes_per_decoded_token(model: Model, context: int, kv_dtype=mx.bfloat16) -> BytesPerToken:
    """From the weights actually loaded: experts x k/E, one embedding row, everything else once (experts
    in a cache count as stored: a decoded token reads k of them per layer, from the cache or the disk)."""
    tensors = [(name, p.nbytes) for name, p in nn.utils.tree_flatten(model.parameters())]
    cache = model.expert_cache
    if cache is not None:
        tensors += [(f"model.layers.{n}.mlp.experts.{name}", t.spec.nbytes)
                    for n, layer in enumerate(cache.stored) for name, t in layer.items()]
    weights = architecture.bytes_per_decoded_token(tensors, model.args)
    return BytesPerToken(weights, model.args.kv_bytes(context, kv_dtype.size), context)


def projected_decode_tps(bytes_per_token: int) -> dict[str, float]:
    """Upper bound: bandwidth / bytes per token (compute, launches and sampling ignored)."""
    return {chip: bw * 1e9 / bytes_per_token for chip, bw in APPLE_BANDWIDTH_GBS.items()}


def ssd_bound_tps(disk_bytes_per_token: float, read_gbs: float = APPLE_SSD_READ_GBS) -> float:
    """Upper bound on decode tok/s when every token reads `disk_bytes_per_token` from an SSD of `read_gbs`."""
    return float("inf") if disk_bytes_per_token <= 0 else read_gbs * 1e9 / disk_bytes_per_token


def peak_rss_bytes() -> int:
    """This process's peak resident set (Linux: VmHWM, which exec does not inherit)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


@dataclass
class BenchResult:
    prompt_tokens: int
    gen_tokens: int
    prefill_tps: float
    decode_tps: float
    ttft_s: float
    peak_rss_bytes: int
    peak_mlx_bytes: Optional[int]
    bytes_per_token: dict = field(default_factory=dict)
    projected_decode_tps: dict = field(default_factory=dict)
    backend: str = ""
    expert_cache: Optional[dict] = None  # when the model's experts are cached: its settings and what decode cost

    def to_dict(self) -> dict:
        return asdict(self)


def run_bench(model: Model, prompt_tokens: int, gen_tokens: int, seed: int = 0) -> BenchResult:
    from .backend import backend_name

    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, min(model.args.vocab_size, 199_998), prompt_tokens).tolist()
    # warm-up: compile/allocate once so the measured run is steady-state
    list(generate(model, prompt[:8], max_tokens=2, temperature=0.0))
    if hasattr(mx, "reset_peak_memory"):
        mx.reset_peak_memory()
    cache = model.expert_cache
    if cache is not None:
        cache.stats = type(cache.stats)()
    stats = GenerationStats()
    n = sum(1 for _ in generate(model, prompt, max_tokens=gen_tokens, temperature=0.0, stats=stats))
    assert n == gen_tokens
    bpt = bytes_per_decoded_token(model, prompt_tokens + gen_tokens)
    peak_mlx = mx.get_peak_memory() if hasattr(mx, "get_peak_memory") else None
    return BenchResult(
        prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, prefill_tps=prompt_tokens / stats.prefill_seconds,
        decode_tps=stats.decode_tps, ttft_s=stats.first_token_seconds, peak_rss_bytes=peak_rss_bytes(),
        peak_mlx_bytes=peak_mlx, bytes_per_token={"weights": bpt.weights, "kv": bpt.kv, "context": bpt.context,
                                                   "total": bpt.total},
        projected_decode_tps=projected_decode_tps(bpt.total), backend=backend_name(),
        expert_cache=None if cache is None else cache_report(cache, max(1, gen_tokens - 1)),
    )


def cache_report(cache, decoded_tokens: int) -> dict:
    """What an expert cache held and what the decoded tokens cost it (hit rate, bytes from disk)."""
    s = cache.stats
    return {"slots": cache.settings.slots, "segment": cache.settings.segment, "policy": cache.settings.policy,
            "prefetch": cache.settings.prefetch, "resident_bytes": cache.resident_bytes, "hit_rate": s.hit_rate,
            "disk_bytes_per_token": s.decode_bytes / decoded_tokens, "prefill_disk_bytes": s.segment_bytes,
            "embedding_bytes": s.embedding_bytes, "prefetched": s.prefetched, "prefetch_used": s.prefetch_used}
