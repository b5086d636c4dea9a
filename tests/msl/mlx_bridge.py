"""An executor for metal_runtime.kernels.KernelSet that runs kernels in the CPU harness.

It takes and returns mx.arrays with mx.fast.metal_kernel's calling convention, so the model's
real decode path can run the real kernel sources on Linux.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from .harness import MSLKernel
from .signature import BF16Array

MX_NAMES = {mx.float32: "float32", mx.bfloat16: "bfloat16", mx.float16: "float16", mx.uint32: "uint32",
            mx.uint8: "uint8", mx.int32: "int32", mx.bool_: "bool"}


def to_host(a):
    if isinstance(a, mx.array):
        if a.dtype == mx.bfloat16:
            return BF16Array(np.array(a.view(mx.uint16)))
        return np.array(a)
    return a


def to_mx(o, dtype_name: str) -> mx.array:
    if isinstance(o, BF16Array):
        return mx.array(o.bits).view(mx.bfloat16)
    return mx.array(o)


class HarnessExecutor:
    def __init__(self, schedule: str = "forward"):
        self.schedule = schedule
        self.calls = 0

    def __call__(self, spec):
        kernel = MSLKernel(spec.name, spec.input_names, spec.output_names, spec.source, spec.header)

        def run(*, inputs, template=(), grid, threadgroup, output_shapes, output_dtypes, **_):
            self.calls += 1
            tmpl = [(n, MX_NAMES[v] if isinstance(v, mx.Dtype) else v) for n, v in template]
            names = [MX_NAMES[d] for d in output_dtypes]
            outs = kernel(inputs=[to_host(x) for x in inputs], template=tmpl, grid=grid, threadgroup=threadgroup,
                          output_shapes=output_shapes, output_dtypes=names, schedule=self.schedule)
            return [to_mx(o, n) for o, n in zip(outs, names)]

        return run
