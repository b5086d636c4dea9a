"""Custom Metal kernels for the MXFP4 experts (router, fused gate/up + SwiGLU, fused down + sum),
their MLX-op twins, and the self-test/fallback logic that chooses between them per backend."""

from .runtime import KernelSet, default_kernels, set_default_kernels
from .sources import KERNELS, KernelSpec, spec
from .twins import experts_down_twin, experts_up_twin, route_twin

__all__ = ["KERNELS", "KernelSet", "KernelSpec", "default_kernels", "experts_down_twin", "experts_up_twin",
           "route_twin", "set_default_kernels", "spec"]
