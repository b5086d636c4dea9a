"""Kernel or MLX path: build the Metal kernels, check and race each configuration once, step aside loudly.

GPTOSS_KERNELS=auto (default): a kernel runs where it is correct and faster; =off: never;
=on: always, even where it failed or lost (for debugging; errors then propagate).

The first time a configuration (template arguments and dtypes) is used: its self-test runs kernel
and twin on random inputs of that configuration (the experts kernels on the layer's own weights) and
they must agree; then kernel and MLX path race on the real inputs. A compile error or a mismatch
disables the configuration with one warning; a correct but slower kernel steps aside quietly. The
verdicts are kept per machine and MLX version (verdicts.py); `status()` is what `gptoss doctor` shows.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import mlx.core as mx

from ..backend import backend_name
from . import sources
from ..experts import SwitchMXFP4GLU
from .twins import route_twin, twin_experts
from .verdicts import Verdict, VerdictStore, time_ms

# executor(spec) -> callable with mx.fast.metal_kernel's call signature, returning output arrays
Executor = Callable[[sources.KernelSpec], Callable[..., list]]
RouteFn = Callable[[mx.array, int], tuple[mx.array, mx.array]]
ExpertsFn = Callable[..., mx.array]


def metal_executor(spec: sources.KernelSpec) -> Callable[..., list]:
    return mx.fast.metal_kernel(name=spec.name, input_names=list(spec.input_names),
                                output_names=list(spec.output_names), source=spec.source, header=spec.header)


def _max_err(a: mx.array, b: mx.array) -> float:
    return float(mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max())


def _agrees(got: mx.array, want: mx.array, rtol: float = 1e-3) -> tuple[bool, float]:
    err = _max_err(got, want)
    scale = float(mx.abs(want.astype(mx.float32)).max())
    return bool(err <= rtol * scale + 1e-5), err


@dataclass
class KernelSet:
    """The Metal kernels of one process: compiled once, each configuration checked and raced once.

    `race(kernel_fn, mlx_fn) -> (kernel_ms, mlx_ms)` times a configuration on its real inputs (the
    layer's own weights); `store` keeps verdicts per machine and MLX version (in memory if None).
    """

    executor: Optional[Executor] = None
    mode: str = field(default_factory=lambda: os.environ.get("GPTOSS_KERNELS", "auto"))
    store: Optional[VerdictStore] = None
    race: Optional[Callable[[Callable[[], Any], Callable[[], Any]], tuple[float, float]]] = None
    _compiled: dict[str, Any] = field(default_factory=dict)
    _verdicts: dict[tuple, Verdict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "on", "off"):
            raise ValueError(f"GPTOSS_KERNELS must be auto, on or off, got {self.mode!r}")
        if self.executor is None and backend_name() == "metal":
            self.executor = metal_executor
        if self.store is None:
            self.store = VerdictStore.default() if self.executor is metal_executor else VerdictStore(None, "here")
        if self.race is None:
            self.race = lambda kernel_fn, mlx_fn: (time_ms(kernel_fn), time_ms(mlx_fn))

    @property
    def active(self) -> bool:
        return self.mode != "off" and self.executor is not None

    def status(self) -> dict[str, str]:
        """Per kernel, in words: skipped (why) / not used yet / passed and faster or slower / failed (why)."""
        if self.mode == "off":
            return {k: "skipped: disabled by GPTOSS_KERNELS=off" for k in sources.KERNELS}
        if self.executor is None:
            return {k: f"skipped: no Metal ({backend_name()} backend); the MLX path runs" for k in sources.KERNELS}
        out = {}
        for k in sources.KERNELS:
            group = "experts" if k.startswith("experts") else k  # up and down are tested together
            verdicts = [v for key, v in self._verdicts.items() if key[0] == group]
            if not verdicts:
                out[k] = "not used yet"
            else:
                out[k] = "; ".join(sorted({v.describe() for v in verdicts}))
        if self.mode == "on":
            out = {k: v + " (GPTOSS_KERNELS=on: kernels forced)" for k, v in out.items()}
        return out

    # -- plumbing --------------------------------------------------------------------------

    def _kernel(self, name: str):
        if name not in self._compiled:
            self._compiled[name] = self.executor(sources.spec(name))
        return self._compiled[name]

    def _disable(self, key: tuple, why: str) -> None:
        msg = (f"gptoss: Metal kernel {key[0]} disabled for {key[1:]} ({why}); using the MLX path. "
               "Set GPTOSS_KERNELS=off to silence, or report this with `gptoss doctor` output.")
        warnings.warn(msg, RuntimeWarning, stacklevel=4)

    def _checked(self, key: tuple, selftest: Callable[[], tuple[bool, str]],
                 kernel_fn: Callable[[], Any], mlx_fn: Callable[[], Any]) -> bool:
        """Decide `key` once (self-test, then a race against the MLX path); True if the kernel runs."""
        if key not in self._verdicts:
            stored = self.store.get(repr(key))
            if stored is not None:
                self._verdicts[key] = stored
            else:
                try:
                    ok, why = selftest()
                except Exception as e:  # noqa: BLE001 - compile errors and launch failures alike
                    if self.mode == "on":
                        raise
                    ok, why = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                verdict = Verdict(ok, why)
                if ok:
                    verdict.kernel_ms, verdict.mlx_ms = self.race(kernel_fn, mlx_fn)
                self._verdicts[key] = verdict
                self.store.put(repr(key), verdict)
            if not self._verdicts[key].correct:
                self._disable(key, self._verdicts[key].detail)
        return self._verdicts[key].use or self.mode == "on"

    # -- router ----------------------------------------------------------------------------

    def _router_call(self, logits: mx.array, k: int) -> tuple[mx.array, mx.array]:
        n, e = logits.shape
        launch = sources.router_launch(n, e, k)
        idx, w = self._kernel("router")(inputs=[logits], output_shapes=[(n, k), (n, k)],
                                        output_dtypes=[mx.uint32, mx.float32], **launch)
        return idx, w

    def route(self, logits: mx.array, k: int, fallback: RouteFn) -> tuple[mx.array, mx.array]:
        """Top-k of logits [N, E]: the kernel where it passed its self-test (and its race against
        `fallback`), else `fallback`. Which calls come here at all is the expert path's policy."""
        n, e = logits.shape
        key = ("router", e, k, str(logits.dtype))
        if self.active:
            def selftest() -> tuple[bool, str]:
                probe = mx.random.normal((3, e), key=mx.random.key(7)).astype(logits.dtype)
                probe[1] = mx.zeros((e,), dtype=logits.dtype)  # all tied: ids 0..k-1
                ki, kw = self._router_call(probe, k)
                ti, tw = route_twin(probe, k)
                if not bool(mx.all(ki == ti)):
                    return False, "router picks different experts than its twin"
                ok, err = _agrees(kw, tw)
                return ok, f"max weight error {err:.2e}"

            if self._checked(key, selftest, lambda: self._router_call(logits, k), lambda: fallback(logits, k)):
                return self._router_call(logits, k)
        return fallback(logits, k)

    # -- experts ---------------------------------------------------------------------------

    def _experts_call(self, x: mx.array, idx: mx.array, w: mx.array, m: SwitchMXFP4GLU, out_dtype) -> mx.array:
        n, k = idx.shape
        hidden, inter = x.shape[-1], m.gate_proj.weight.shape[1]
        up = sources.experts_up_launch(n, k, hidden, inter, m.limit, m.alpha)
        (act,) = self._kernel("experts_up")(
            inputs=[x, idx, m.gate_proj.weight, m.gate_proj.scales, m.gate_proj.bias, m.up_proj.weight,
                    m.up_proj.scales, m.up_proj.bias],
            output_shapes=[(n, k, inter)], output_dtypes=[mx.float32], **up)
        down = sources.experts_down_launch(n, k, hidden, inter, out_dtype)
        (y,) = self._kernel("experts_down")(
            inputs=[act, idx, w.astype(mx.float32), m.down_proj.weight, m.down_proj.scales, m.down_proj.bias],
            output_shapes=[(n, hidden)], output_dtypes=[out_dtype], **down)
        return y

    def experts(self, x: mx.array, idx: mx.array, w: mx.array, m: SwitchMXFP4GLU, fallback: ExpertsFn,
                out_dtype: Optional[mx.Dtype] = None) -> mx.array:
        """y [N, H]: the kernels where they passed their self-test (and their race against `fallback`),
        else `fallback`. Which calls come here at all is the expert path's policy.

        `out_dtype` (default x's) is what the kernel writes: its sum over k is float32 inside.
        """
        out_dtype = out_dtype or x.dtype
        hidden, inter = x.shape[-1], m.gate_proj.weight.shape[1]
        key = ("experts", hidden, inter, m.num_experts, idx.shape[-1], str(x.dtype))
        if out_dtype != x.dtype:  # a separate configuration (kept out of the usual key: stored verdicts stay valid)
            key += (str(out_dtype),)
        if self.active:
            def selftest() -> tuple[bool, str]:
                probe = mx.random.normal((2, hidden), key=mx.random.key(11)).astype(x.dtype)
                pidx = (mx.arange(2 * idx.shape[-1]).reshape(2, -1) % m.num_experts).astype(mx.uint32)
                pw = mx.softmax(mx.random.normal(pidx.shape, key=mx.random.key(12)), axis=-1)
                got = self._experts_call(probe, pidx, pw, m, out_dtype)
                want = twin_experts(probe, pidx, pw, m, out_dtype)
                ok, err = _agrees(got, want, rtol=1e-2 if x.dtype != mx.float32 else 1e-3)
                return ok, f"max error {err:.2e} vs twin"

            if self._checked(key, selftest, lambda: self._experts_call(x, idx, w, m, out_dtype),
                             lambda: fallback(x, idx, w, m, out_dtype)):
                return self._experts_call(x, idx, w, m, out_dtype)
        return fallback(x, idx, w, m, out_dtype)

