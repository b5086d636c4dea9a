"""Expert parallelism in one process: the ranks' partial MoE sums add up to the whole, slices load exactly.

Each "rank" here is an ExpertParallelPath over a one-process group (its all_sum returns its input), so
the partial sums can be added by hand; test_distributed.py runs real ranks under mlx.launch.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from gptoss_metal.architecture import is_expert_tensor
from gptoss_metal.converters.presets import PRESETS
from gptoss_metal.metal_runtime import load
from gptoss_metal.metal_runtime.diagnostics import probe_layer
from gptoss_metal.metal_runtime.distributed import (
    BroadcastSampler,
    DistributedError,
    DistributedGroup,
    ExpertParallelPath,
    launched_backend,
    launched_size,
    load_expert_parallel,
)
from gptoss_metal.metal_runtime.expert_paths import MLXPath, choose_expert_path
from gptoss_metal.metal_runtime.experts import SwitchMXFP4GLU
from gptoss_metal.metal_runtime.sampling import SamplerState

E = 8


def alone(rank: int = 0, size: int = 2) -> DistributedGroup:
    """A group whose collectives are this process alone (all_sum(x) == x), playing `rank` of `size`."""
    return DistributedGroup(rank, size, "ring", mx.distributed.init())


def sliced(layer: SwitchMXFP4GLU, first: int, last: int) -> SwitchMXFP4GLU:
    part = SwitchMXFP4GLU(last - first, layer.gate_proj.weight.shape[-1] * 8, layer.gate_proj.weight.shape[1],
                          layer.limit, layer.alpha)
    for name in ("gate_proj", "up_proj", "down_proj"):
        src, dst = getattr(layer, name), getattr(part, name)
        dst.weight, dst.scales, dst.bias = src.weight[first:last], src.scales[first:last], src.bias[first:last]
    return part


class Recorder:
    """An inner path that records which local experts it was asked to run."""

    name = "recorder"

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def route(self, logits, k):
        return self.inner.route(logits, k)

    def experts(self, x, idx, w, layer, out_dtype=None):
        self.calls.append((np.array(idx), np.array(w)))
        return self.inner.experts(x, idx, w, layer, out_dtype)


@pytest.mark.parametrize("tokens", [1, 5, 40])  # decode, verification-sized (masked), prefill (compact)
@pytest.mark.parametrize("ranks", [2, 3, 4])
@pytest.mark.parametrize("inner", ["twin", "mlx", "host"])
def test_the_ranks_partial_sums_add_up_to_the_whole_layer(tokens, ranks, inner):
    layer = probe_layer(num_experts=E, hidden=64, intermediate=64)
    whole = choose_expert_path(inner)
    x = mx.random.normal((tokens, 64), key=mx.random.key(tokens))
    logits = mx.random.normal((tokens, E), key=mx.random.key(100 + tokens))
    logits[0] = mx.zeros((E,))  # a tied row: ids 0..3
    idx, w = whole.route(logits, 4)
    want = whole.experts(x, idx, w, layer, out_dtype=mx.float32)
    total = mx.zeros_like(want)
    for r in range(ranks):
        first, last = PRESETS["tiny"].expert_split(ranks)[r]  # tiny has E = 8 experts too
        path = ExpertParallelPath(choose_expert_path(inner), alone(r, ranks), first, last)
        total = total + path.experts(x, idx, w, sliced(layer, first, last), out_dtype=mx.float32)
    np.testing.assert_allclose(np.array(total), np.array(want), rtol=1e-5, atol=1e-5)


def test_decode_borrows_an_expert_the_token_already_uses_here():
    """A slot routed to another rank costs no extra expert read: it reuses a local one, with weight 0."""
    layer = sliced(probe_layer(num_experts=E), 0, 4)
    rec = Recorder(MLXPath())
    path = ExpertParallelPath(rec, alone(), 0, 4)
    idx = mx.array([[5, 2, 7, 1], [6, 7, 4, 5], [3, 0, 2, 1]], dtype=mx.uint32)  # local: 2,1 | none | all
    w = mx.array([[0.4, 0.3, 0.2, 0.1]] * 3)
    path.experts(mx.random.normal((3, layer.gate_proj.weight.shape[-1] * 8)), idx, w, layer)
    (ids, ws), = rec.calls
    assert ids.tolist() == [[2, 2, 2, 1], [0, 0, 0, 0], [3, 0, 2, 1]]
    np.testing.assert_allclose(ws, [[0, 0.3, 0, 0.1], [0, 0, 0, 0], [0.4, 0.3, 0.2, 0.1]], rtol=1e-6)


def test_prefill_runs_only_this_ranks_pairs():
    layer = sliced(probe_layer(num_experts=E), 4, 8)
    rec = Recorder(MLXPath())
    path = ExpertParallelPath(rec, alone(1), 4, 8)
    idx = mx.array(np.random.default_rng(0).permuted(np.tile(np.arange(E), (20, 1)), axis=1)[:, :4]
                   .astype(np.uint32))
    path.experts(mx.random.normal((20, layer.gate_proj.weight.shape[-1] * 8)), idx, mx.ones((20, 4)) / 4, layer)
    (ids, _), = rec.calls
    assert ids.shape == (int((np.array(idx) >= 4).sum()), 1)  # one row per local pair, nothing else
    assert ids.min() >= 0 and ids.max() < 4 and np.all(np.diff(ids[:, 0]) >= 0)  # grouped by expert


def test_expert_splits_cover_every_expert_once_even_when_uneven():
    for n in (1, 2, 3, 5, 8, 32, 128):
        ranges = PRESETS["120b"].expert_split(n)
        assert len(ranges) == n and ranges[0][0] == 0 and ranges[-1][1] == 128
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_a_slice_load_holds_exactly_those_experts(tiny_runtime):
    full = load(tiny_runtime, dtype="float32")
    part = load_expert_parallel(tiny_runtime, alone(1, 2), dtype="float32")
    fp, pp = dict(tree_flatten(full.parameters())), dict(tree_flatten(part.parameters()))
    assert fp.keys() == pp.keys()
    for name, a in pp.items():
        want = fp[name][4:8] if is_expert_tensor(name) else fp[name]
        assert a.dtype == want.dtype and np.array_equal(np.array(a), np.array(want)), name
    held = sum(a.nbytes for n, a in pp.items() if is_expert_tensor(n))
    assert held * 2 == sum(a.nbytes for n, a in fp.items() if is_expert_tensor(n))
    assert part.expert_path.first == 4 and part.expert_path.last == 8


def test_more_ranks_than_experts_is_a_clear_error(tiny_runtime):
    with pytest.raises(DistributedError, match="16 ranks cannot share 8 experts"):
        load_expert_parallel(tiny_runtime, alone(0, 16))


def test_stored_bytes_from_the_architecture_match_a_checkpoint(tiny_runtime):
    from gptoss_metal.converters import inspect_checkpoint

    s = inspect_checkpoint(tiny_runtime)
    b = s.arch.stored_bytes()
    assert (b.experts, b.dense) == (s.expert_bytes, s.tensor_bytes - s.expert_bytes)
    assert PRESETS["120b"].rank_bytes(2)[0] == PRESETS["120b"].stored_bytes().dense + \
        PRESETS["120b"].stored_bytes().experts // 2
    from gptoss_metal.cli.doctor import _split_projection

    dense = s.tensor_bytes - s.expert_bytes  # doctor's projection: the checkpoint's dense bytes and 1/N of its experts
    assert _split_projection(s) == [{"ranks": n, "bytes_per_rank": dense + s.expert_bytes // n} for n in (2, 4, 8)]


def test_launch_detection(tmp_path):
    assert launched_backend({}) is None
    empty = tmp_path / "one"
    empty.write_text("\n")  # what `mlx.launch -n 1` writes
    assert launched_backend({"MLX_RANK": "0", "MLX_HOSTFILE": str(empty)}) is None
    two = tmp_path / "two"
    two.write_text(json.dumps([["127.0.0.1:5000"], ["127.0.0.1:5001"]]))
    assert launched_backend({"MLX_RANK": "1", "MLX_HOSTFILE": str(two)}) == "ring"
    assert launched_backend({"MLX_RANK": "1", "MLX_JACCL_COORDINATOR": "10.0.0.1:5000"}) == "jaccl"
    with pytest.raises(DistributedError, match="mlx.launch --hostfile"):
        launched_backend({"MLX_RANK": "0"})
    missing = {"MLX_RANK": "1", "MLX_HOSTFILE": str(tmp_path / "missing")}
    with pytest.raises(DistributedError, match="cannot read it"):
        launched_backend(missing)
    assert launched_size(missing) == 0  # the size is for messages: an unreadable hostfile just leaves it unknown
    assert launched_size({}) == 0
    assert launched_size({"MLX_RANK": "0", "MLX_HOSTFILE": str(empty)}) == 0
    assert launched_size({"MLX_RANK": "1", "MLX_HOSTFILE": str(two)}) == 2
    assert launched_size({"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "2"}) == 3


def test_the_broadcast_sampler_alone_samples_like_the_plain_one_and_can_be_forced():
    logits = mx.random.normal((1, 50), key=mx.random.key(1))
    plain, shared = SamplerState(0.7, 1.0, 9), BroadcastSampler(alone(), 0.7, 1.0, 9)
    assert [plain(logits, i).item() for i in range(5)] == [shared(logits, i).item() for i in range(5)]
    rows = mx.concatenate([logits, -logits])
    assert shared.targets(rows, 3).tolist() == plain.targets(rows, 3).tolist()
    assert SamplerState(0.0).targets(logits, 0).item() == int(mx.argmax(logits))
    shared.force(200002)
    assert shared(logits, 5).item() == 200002 and shared.targets(rows, 6).tolist() == [200002, 200002]


def test_mpi_launches_are_detected_too():
    assert launched_backend({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}) == "mpi"
    assert launched_backend({"OMPI_COMM_WORLD_SIZE": "1"}) is None
