"""What `gptoss doctor` reports about the runtime: platform, MLX, Metal, kernels, memory."""

from __future__ import annotations

import os
import platform
from typing import Any, Optional

import mlx.core as mx

from .backend import backend_name
from .experts import SwitchMXFP4GLU
from .kernels.runtime import KernelSet
from .kernels.twins import route_twin, twin_experts


def total_memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def probe_layer(num_experts: int = 8, hidden: int = 96, intermediate: int = 64, seed: int = 1) -> SwitchMXFP4GLU:
    """A real expert layer with random MXFP4 weights (scales near 1), for exercising kernels."""
    layer = SwitchMXFP4GLU(num_experts, hidden, intermediate, limit=7.0, alpha=1.702)
    for i, proj in enumerate((layer.gate_proj, layer.up_proj, layer.down_proj)):
        key = mx.random.key(seed + i)
        proj.weight = mx.random.randint(0, 2**31, proj.weight.shape, key=key).astype(mx.uint32)
        proj.scales = mx.random.randint(119, 124, proj.scales.shape, key=key).astype(mx.uint8)
    return layer


def kernel_self_test(kernels: KernelSet) -> dict[str, str]:
    """Exercise every kernel once on a small random layer so its self-test runs, then report."""
    if kernels.active:
        layer = probe_layer()
        x = mx.random.normal((1, layer.gate_proj.weight.shape[-1] * 8))
        idx, w = kernels.route(mx.random.normal((1, layer.num_experts)), 4, fallback=route_twin)
        mx.eval(kernels.experts(x, idx, w, layer, fallback=twin_experts))
    return kernels.status()


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
    kernels = KernelSet()
    info["kernels"] = kernel_self_test(kernels) if run_kernels else kernels.status()
    return info
