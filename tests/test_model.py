"""The MLX model against the float64 reference, and cache exactness (chunking, snapshots, batches)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import mlx.core as mx

from gptoss_metal.converters import convert
from gptoss_metal.metal_runtime import load
from gptoss_metal.metal_runtime.errors import CacheError, ContextOverflowError, ModelLoadError
from gptoss_metal.metal_runtime.expert_paths import HostPath, MLXPath, TwinPath
from reference import Reference

WINDOW = 8  # tiny preset
SEQ = [200006, 17360, 200008, 12194, 11, 2375, 0, 481, 9, 200007, 200006, 173781, 200005, 17196,
       200008, 40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 5000, 6000, 7000, 100000]  # 30 > 3 x window


@pytest.fixture(scope="session")
def ref_logits(tiny_hf):
    return Reference(tiny_hf).logits(SEQ)


@pytest.fixture(scope="session")
def model32(tiny_runtime):
    return load(tiny_runtime, dtype="float32")


def _np(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


@pytest.mark.parametrize("path", [TwinPath(), MLXPath(sort_min_pairs=1), MLXPath(sort_min_pairs=10**9),
                                  HostPath(min_rows_per_expert=0)], ids=["twin", "mlx-sorted", "mlx-gathered", "host"])
def test_float32_logits_match_float64_reference(tiny_runtime, ref_logits, path):
    model = load(tiny_runtime, dtype="float32", experts=path)  # every expert path the model may pick
    got = _np(model(mx.array([SEQ])))[0]
    err = np.abs(got - ref_logits).max()
    assert err <= 1e-4, err
    assert np.abs(ref_logits).max() > 1.0  # a meaningful scale, not all-zero logits


def test_incremental_decode_equals_full_forward(model32):
    full = _np(model32(mx.array([SEQ])))[0]
    cache = model32.make_cache()
    steps = [_np(model32(mx.array([[t]]), cache))[0, 0] for t in SEQ]
    assert cache.offset == len(SEQ)
    np.testing.assert_allclose(np.stack(steps), full, atol=2e-5, rtol=0)


@pytest.mark.parametrize("chunks", [[7, 1, 22], [8, 8, 8, 6], [9, 21], [3, 5, 9, 13], [1, 29], [15, 15]])
def test_chunked_prefill_straddling_the_window_equals_one_shot(model32, chunks):
    full = _np(model32(mx.array([SEQ])))[0]
    cache = model32.make_cache()
    outs, start = [], 0
    for c in chunks:
        outs.append(_np(model32(mx.array([SEQ[start:start + c]]), cache))[0])
        start += c
    np.testing.assert_allclose(np.concatenate(outs), full, atol=2e-5, rtol=0)


def test_snapshot_restore_gives_identical_continuations(model32):
    cache = model32.make_cache()
    model32(mx.array([SEQ[:12]]), cache)
    snap = cache.snapshot()
    a = [_np(model32(mx.array([[t]]), cache))[0, 0] for t in SEQ[12:]]  # wraps the ring twice
    cache.restore(snap)
    assert cache.offset == 12
    b = [_np(model32(mx.array([[t]]), cache))[0, 0] for t in SEQ[12:]]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    # a different continuation after restoring, then restoring again: still exact
    cache.restore(snap)
    model32(mx.array([[5, 6, 7, 8, 9, 10, 11, 12, 13]]), cache)
    cache.restore(snap)
    c = _np(model32(mx.array([SEQ[12:]]), cache))[0]
    np.testing.assert_allclose(c, np.stack(a), atol=2e-5, rtol=0)


def test_trim_by_one_after_wrapping_is_exact_and_larger_trims_refuse(model32):
    cache = model32.make_cache()
    model32(mx.array([SEQ[:20]]), cache)
    full = _np(model32(mx.array([SEQ[:21]])))[0, -1]
    model32(mx.array([[99]]), cache)  # a wrong token at position 20
    cache.trim(1)
    np.testing.assert_allclose(_np(model32(mx.array([[SEQ[20]]]), cache))[0, 0], full, atol=2e-5, rtol=0)
    with pytest.raises(CacheError, match="restore a snapshot"):
        cache.trim(3)
    assert cache.offset == 21  # nothing changed


def test_trim_slack_allows_longer_exact_trims(model32):
    cache = model32.make_cache(trim_slack=4)
    model32(mx.array([SEQ[:25]]), cache)
    cache.trim(5)
    got = _np(model32(mx.array([SEQ[20:]]), cache))[0]
    full = _np(model32(mx.array([SEQ])))[0, 20:]
    np.testing.assert_allclose(got, full, atol=2e-5, rtol=0)


def test_invalidated_snapshot_is_refused(model32):
    cache = model32.make_cache()
    model32(mx.array([SEQ[:10]]), cache)
    snap = cache.snapshot()
    model32(mx.array([SEQ[10:12]]), cache)
    early = model32.make_cache()
    # cut below the snapshot via another snapshot, rewrite, then try the old one
    model32(mx.array([SEQ[:5]]), early)
    s5 = early.snapshot()
    model32(mx.array([SEQ[5:10]]), early)
    s10 = early.snapshot()
    early.restore(s5)
    model32(mx.array([[1, 2, 3]]), early)
    with pytest.raises(CacheError):
        early.restore(s10)
    with pytest.raises(CacheError, match="another cache"):
        early.restore(snap)


def test_batch_of_two_equals_two_singles(model32):
    a, b = SEQ[:20], SEQ[10:30]
    both = _np(model32(mx.array([a, b])))
    np.testing.assert_allclose(both[0], _np(model32(mx.array([a])))[0], atol=2e-5, rtol=0)
    np.testing.assert_allclose(both[1], _np(model32(mx.array([b])))[0], atol=2e-5, rtol=0)
    cache = model32.make_cache()
    model32(mx.array([a[:15], b[:15]]), cache)
    step = _np(model32(mx.array([[a[15]], [b[15]]]), cache))
    np.testing.assert_allclose(step[1, 0], _np(model32(mx.array([b[:16]])))[0, -1], atol=2e-5, rtol=0)


def test_bfloat16_model_tracks_the_reference(tiny_runtime, ref_logits):
    model = load(tiny_runtime)  # bf16 weights, activations and KV by default
    got = _np(model(mx.array([SEQ])))[0]
    corr = np.corrcoef(got.ravel(), ref_logits.ravel())[0, 1]
    assert corr > 0.999, corr
    assert (got.argmax(-1) == ref_logits.argmax(-1)).mean() >= 0.9


def test_context_overflow_is_a_clear_error(tiny_runtime):
    model = load(tiny_runtime, dtype="float32")
    model.model.args = dataclasses.replace(model.args, max_position_embeddings=16)
    cache = model.make_cache()
    model(mx.array([SEQ[:10]]), cache)
    with pytest.raises(ContextOverflowError, match="exceed the model's context of 16"):
        model(mx.array([SEQ[10:20]]), cache)


def test_loading_an_unconverted_folder_says_convert_first(tiny_hf, tmp_path):
    with pytest.raises(ModelLoadError, match="gptoss convert"):
        load(tiny_hf)
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load(tmp_path / "nothing")


def test_independent_checkpoint_logits_match_reference(tmp_path):
    """A checkpoint written by the tests' own writer (not synth), converted and loaded."""
    from test_convert import _independent_hf_checkpoint

    _independent_hf_checkpoint(tmp_path / "indep", seed=11)
    convert(tmp_path / "indep", tmp_path / "rt")
    model = load(tmp_path / "rt", dtype="float32")
    seq = SEQ[:14]  # window 4 in this checkpoint: crossed 3 times
    got = _np(model(mx.array([seq])))[0]
    want = Reference(tmp_path / "indep").logits(seq)
    assert np.abs(got - want).max() <= 1e-4


def test_mlx_community_style_q8_folder_loads(tmp_path, tiny_original, tiny_runtime):
    """A *-MXFP4-Q8 style folder: only a top-level affine quantization entry, router quantized too;
    every module's quantization is inferred from its tensors (as mlx-lm does)."""
    import json

    import mlx.nn as nn

    from gptoss_metal.converters import convert

    convert(tiny_original, tmp_path / "q8", quantize_dense="q8")
    cfg = json.loads((tmp_path / "q8" / "config.json").read_text())
    cfg["quantization"] = cfg["quantization_config"] = {"group_size": 64, "bits": 8}
    (tmp_path / "q8" / "config.json").write_text(json.dumps(cfg))
    f = tmp_path / "q8" / "model.safetensors"
    w = mx.load(str(f))
    for n in range(4):
        p = f"model.layers.{n}.mlp.router"
        qw, qs, qb = mx.quantize(w.pop(f"{p}.weight"), group_size=64, bits=8)
        w |= {f"{p}.weight": qw, f"{p}.scales": qs, f"{p}.biases": qb}
    mx.save_safetensors(str(f), w)
    (tmp_path / "q8" / "model.safetensors.index.json").unlink()
    model = load(tmp_path / "q8", dtype="float32")
    assert isinstance(model.layers[0].mlp.router, nn.QuantizedLinear)
    assert isinstance(model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    ref = load(tiny_runtime, dtype="float32")
    got, want = _np(model(mx.array([SEQ[:12]])))[0], _np(ref(mx.array([SEQ[:12]])))[0]
    assert np.isfinite(got).all()
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_requantized_experts_are_refused_with_a_clear_message(tmp_path, tiny_runtime):
    import shutil

    shutil.copytree(tiny_runtime, tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    w = mx.load(str(f))
    w["model.layers.0.mlp.experts.gate_proj.biases"] = mx.zeros((8, 64, 1))
    mx.save_safetensors(str(f), w)
    (tmp_path / "m" / "model.safetensors.index.json").unlink()
    with pytest.raises(ModelLoadError, match="re-quantized with affine"):
        load(tmp_path / "m")


@pytest.fixture(scope="session")
def ref_bf16_logits(tiny_hf):
    return Reference(tiny_hf, activations="bfloat16").logits(SEQ)


@pytest.mark.parametrize("path", [MLXPath(), None], ids=["mlx-bf16-compute (GPU path)", "auto"])
def test_bf16_logits_stay_within_the_error_of_the_references_own_bf16_run(tiny_runtime, ref_logits,
                                                                          ref_bf16_logits, path):
    """bf16 activations cost what storing activations in bf16 costs, and not more."""
    model = load(tiny_runtime, dtype="bfloat16", experts=path)
    got = _np(model(mx.array([SEQ])))[0]
    ours, bound = np.abs(got - ref_logits), np.abs(ref_bf16_logits - ref_logits)
    assert ours.max() <= 1.25 * bound.max(), (ours.max(), bound.max())
    assert ours.mean() <= 1.5 * bound.mean(), (ours.mean(), bound.mean())
    assert (got.argmax(-1) == ref_logits.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float32])
def test_fused_residual_adds_give_the_unfused_values_bit_for_bit(dtype):
    """The compiled residual kernels are only fewer launches: every value equals the separate ops'."""
    from gptoss_metal.metal_runtime.model import add_rounded, add_widened

    rng = np.random.default_rng(7)
    x, a = (mx.array(rng.standard_normal((3, 5, 2880)) * s).astype(dtype) for s in (30.0, 0.01))
    y32 = mx.array(rng.standard_normal((3, 5, 2880)) * 3.0).astype(mx.float32)
    h, h32 = add_widened(x, a)
    assert h.dtype == dtype and h32.dtype == mx.float32
    assert np.array_equal(np.array(h.astype(mx.float32)), np.array((x + a).astype(mx.float32)))
    assert np.array_equal(np.array(h32), np.array((x + a).astype(mx.float32)))
    r = add_rounded(x, y32)
    assert r.dtype == dtype
    assert np.array_equal(np.array(r.astype(mx.float32)), np.array((x + y32.astype(dtype)).astype(mx.float32)))
    # rounding the float32 sum once differs from adding in float32 and rounding after: the test can tell
    assert dtype == mx.float32 or not np.array_equal(np.array(r.astype(mx.float32)),
                                                     np.array((x.astype(mx.float32) + y32).astype(dtype).astype(mx.float32)))
