"""Why mlx-lm's 20b prefill cannot be measured on the CPU backend beyond ~15 prompt tokens.

    python benchmarks/cpu_gather_qmm.py [--rows 64]

Times MLX's MXFP4 `gather_qmm` for one 2880x2880 expert matrix set (32 experts) with the given
number of token-expert rows, unsorted and sorted (mlx-lm sorts from 64 rows on). Takes minutes.
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    a = ap.parse_args()
    e, h, k = 32, 2880, 4
    w = (mx.random.normal((e, h, h)) * 0.02).astype(mx.bfloat16)
    wq, ws = mx.quantize(w, group_size=32, bits=4, mode="mxfp4")[:2]
    del w
    mx.eval(wq, ws)
    n = a.rows // k
    x = mx.random.normal((n, h)).astype(mx.bfloat16)
    idx = mx.array(np.random.default_rng(0).integers(0, e, (n, k)).astype(np.uint32))
    flat = idx.flatten()
    order = mx.argsort(flat)
    xs, si = x[order // k][:, None, :], flat[order]
    mx.eval(x, idx, xs, si)
    t = time.perf_counter()
    mx.eval(mx.gather_qmm(x[:, None, None, :], wq, ws, None, rhs_indices=idx, transpose=True, group_size=32,
                          bits=4, mode="mxfp4"))
    print(f"{a.rows} rows, unsorted gather_qmm: {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    mx.eval(mx.gather_qmm(xs, wq, ws, None, rhs_indices=si[:, None], transpose=True, group_size=32, bits=4,
                          mode="mxfp4", sorted_indices=True))
    print(f"{a.rows} rows, sorted gather_qmm:   {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
