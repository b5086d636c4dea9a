"""What `gptoss doctor` reports about the runtime: platform, MLX, Metal, kernels, memory."""

from __future__ import annotations

import os
import platform
from typing import Any, Optional

import mlx.core as mx

from .backend import backend_name
from .kernels.runtime import KernelSet, default_kernels


def total_memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def kernel_self_test(kernels: Optional[KernelSet] = None) -> dict[str, str]:
    """Exercise every kernel once on a small random layer so its self-test runs, then report."""
    from types import SimpleNamespace

    ks = kernels or default_kernels()
    if ks.active:
        e, h, i = 8, 96, 64

        def proj(out_dim: int, in_dim: int, seed: int) -> SimpleNamespace:
            key = mx.random.key(seed)
            return SimpleNamespace(
                weight=mx.random.randint(0, 2**31, (e, out_dim, in_dim // 8), key=key).astype(mx.uint32),
                scales=mx.random.randint(119, 124, (e, out_dim, in_dim // 32), key=key).astype(mx.uint8),
                bias=mx.zeros((e, out_dim)),
            )

        layer = SimpleNamespace(gate_proj=proj(i, h, 1), up_proj=proj(i, h, 2), down_proj=proj(h, i, 3),
                                num_experts=e, limit=7.0, alpha=1.702)
        x = mx.random.normal((1, h))
        idx, w = ks.route(mx.random.normal((1, e)), 4)
        mx.eval(ks.experts(x, idx, w, layer))
    return ks.status()


def diagnostics(run_kernels: bool = True) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "mlx": getattr(mx, "__version__", "unknown"),
        "backend": backend_name(),
        "metal_available": bool(mx.metal.is_available()),
        "memory_bytes": total_memory_bytes(),
        "kernels_mode": os.environ.get("GPTOSS_KERNELS", "auto"),
    }
    info["kernels"] = kernel_self_test() if run_kernels else default_kernels().status()
    return info
