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
