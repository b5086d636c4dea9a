"""Expert paths: the fast router picks exactly what the twin (the kernels' definition) picks, ties included."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from gptoss_metal.metal_runtime.expert_paths import HostPath, MLXPath, choose_expert_path, ranked_top_k
from gptoss_metal.metal_runtime.kernels.twins import route_twin


@pytest.mark.parametrize("experts", [8, 32, 128])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_fast_router_equals_the_twin_on_tie_heavy_logits(experts, dtype):
    rng = np.random.default_rng(experts)
    # few distinct values: most rows have ties inside and at the edge of the top 4
    logits = mx.array(rng.integers(-3, 3, (512, experts)).astype(np.float32) * 0.5).astype(dtype)
    logits[0] = mx.zeros((experts,), dtype=dtype)  # everything tied: ids 0..3
    logits[1, :] = -0.0  # negative zero ties with zero
    logits[1, experts - 1] = 0.0
    fi, fw = ranked_top_k(logits, 4)
    ti, tw = route_twin(logits, 4)
    np.testing.assert_array_equal(np.array(fi), np.array(ti))
    np.testing.assert_allclose(np.array(fw), np.array(tw), rtol=1e-6)
    assert np.array(fi)[0].tolist() == [0, 1, 2, 3]


def test_router_cost_does_not_grow_with_experts_squared():
    """The twin builds an N x E x E comparison; the fast router sorts each row (no E^2 tensor)."""
    logits = mx.random.normal((4, 128))
    idx, _ = ranked_top_k(logits, 4)
    assert idx.shape == (4, 4)
    # a 2048 x 128 prefill routes without allocating 2048*128*128 booleans (33M): just run it
    big = mx.random.normal((2048, 128))
    mx.eval(ranked_top_k(big, 4))


def test_auto_path_per_backend_on_this_machine():
    path = choose_expert_path("auto")
    assert isinstance(path, HostPath) and isinstance(path.inner, MLXPath)  # the CPU backend here
    assert path.inner.compute_dtype == mx.float32  # the CPU wheel's MXFP4 matmul is slow on bf16 input
    with pytest.raises(ValueError, match="expert path must be one of"):
        choose_expert_path("fastest")


@pytest.mark.parametrize("name", ["twin", "mlx", "host"])
@pytest.mark.parametrize("tokens", [3, 40])  # decode-sized and prefill-sized (sorted / host BLAS)
def test_every_path_hands_out_its_float32_sum_unrounded_on_request(name, tokens):
    """An expert-parallel rank exchanges float32 partial sums; rounding them to bf16 first changes tokens."""
    from gptoss_metal.metal_runtime.diagnostics import probe_layer

    layer = probe_layer(num_experts=4, hidden=64, intermediate=64)
    path = choose_expert_path(name)
    if isinstance(path, HostPath):
        path.min_rows_per_expert = 1  # take the host BLAS route even for this small layer
    x = mx.random.normal((tokens, 64), key=mx.random.key(3)).astype(mx.bfloat16)
    idx, w = path.route(mx.random.normal((tokens, 4), key=mx.random.key(4)), 2)
    wide = path.experts(x, idx, w, layer, out_dtype=mx.float32)
    plain = path.experts(x, idx, w, layer)
    assert wide.dtype == mx.float32 and plain.dtype == mx.bfloat16
    np.testing.assert_array_equal(np.array(wide.astype(mx.bfloat16).astype(mx.float32)),
                                  np.array(plain.astype(mx.float32)))
    assert float(mx.abs(wide - wide.astype(mx.bfloat16).astype(mx.float32)).max()) > 0  # really unrounded
