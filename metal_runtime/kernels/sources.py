"""The Metal kernel sources and how each is launched (names, template arguments, grid).

The `.metal` files next to this module are kernel *bodies* as `mx.fast.metal_kernel` takes them
(MLX writes the signature); `common.metal` is the shared header. The same strings are compiled
by the tests' CPU harness, so there is exactly one source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent
SIMD = 32
THREADGROUP = 64  # two simdgroups
ROWS_PER_THREADGROUP = 8  # 4 rows per simdgroup


@dataclass(frozen=True)
class KernelSpec:
    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    source: str
    header: str


@lru_cache(maxsize=None)
def header() -> str:
    return (HERE / "common.metal").read_text()


@lru_cache(maxsize=None)
def spec(name: str) -> KernelSpec:
    io = {
        "router": (("logits",), ("indices", "weights")),
        "experts_up": (("x", "indices", "gate_weight", "gate_scales", "gate_bias", "up_weight", "up_scales",
                        "up_bias"), ("act",)),
        "experts_down": (("act", "indices", "weights", "down_weight", "down_scales", "down_bias"), ("y",)),
    }[name]
    return KernelSpec(f"gptoss_{name}", io[0], io[1], (HERE / f"{name}.metal").read_text(), header())


KERNELS = ("router", "experts_up", "experts_down")


def router_launch(n_tokens: int, n_experts: int, k: int) -> dict:
    return {"grid": (SIMD, n_tokens, 1), "threadgroup": (SIMD, 1, 1),
            "template": [("E", n_experts), ("K", k), ("PER_LANE", -(-n_experts // SIMD))]}


def milli(value: float, what: str) -> int:
    """A config constant as the integer template argument `value * 1000` (exact in three decimals)."""
    m = round(value * 1000)
    if abs(m - value * 1000) > 1e-6:
        raise ValueError(f"{what} {value} has more than three decimals; the kernels take it as an integer x1000")
    return int(m)


def experts_up_launch(n_tokens: int, k: int, hidden: int, inter: int, limit: float, alpha: float) -> dict:
    groups = -(-inter // ROWS_PER_THREADGROUP)
    return {"grid": (THREADGROUP * groups, n_tokens * k, 1), "threadgroup": (THREADGROUP, 1, 1),
            "template": [("H", hidden), ("I", inter), ("K", k), ("LIMIT_X1000", milli(limit, "swiglu_limit")),
                         ("ALPHA_X1000", milli(alpha, "swiglu_alpha"))]}


def experts_down_launch(n_tokens: int, k: int, hidden: int, inter: int, out_dtype) -> dict:
    groups = -(-hidden // ROWS_PER_THREADGROUP)
    return {"grid": (THREADGROUP * groups, n_tokens, 1), "threadgroup": (THREADGROUP, 1, 1),
            "template": [("T", out_dtype), ("H", hidden), ("I", inter), ("K", k)]}
