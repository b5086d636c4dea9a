"""Custom Metal kernels for the MXFP4 experts (router, fused gate/up + SwiGLU, fused down + sum),
their MLX-op twins, and the self-test/fallback logic that chooses between them per backend."""

from .runtime import KernelSet
from .sources import KERNELS, KernelSpec, spec
from .twins import experts_down_twin, experts_up_twin, route_twin, twin_experts

__all__ = ["KERNELS", "KernelSet", "KernelSpec", "experts_down_twin", "experts_up_twin",
           "route_twin", "spec", "twin_experts"]
