"""Synthetic checkpoints: real layouts, same weights in both formats, bounded streaming."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gptoss_metal.converters import PRESETS, synth
from gptoss_metal.converters.layouts import expected_hf, expected_original
from gptoss_metal.converters.safetensors_io import collect_tensors
from gptoss_metal.converters.synth import CHUNK_BYTES, float32_to_bf16_bits, hf_tensors, logical_params, original_tensors
from helpers import decode_mxfp4, load_tensors


def test_tiny_hf_layout_is_the_real_one(tiny_hf):
    cfg = json.loads((tiny_hf / "config.json").read_text())
    assert cfg["model_type"] == "gpt_oss"
    assert cfg["quantization_config"]["quant_method"] == "mxfp4"
    assert cfg["rope_scaling"] == {
        "beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
        "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": False,
    }
    index = json.loads((tiny_hf / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2  # sharded
    t = load_tensors(tiny_hf)
    a = PRESETS["tiny"]
    assert t["model.layers.0.mlp.experts.gate_up_proj_blocks"].shape == (8, 128, 2, 16)
    assert t["model.layers.0.mlp.experts.gate_up_proj_blocks"].dtype == np.uint8
    assert t["model.layers.0.mlp.experts.down_proj_scales"].shape == (8, 64, 2)
    assert t["model.layers.0.self_attn.sinks"].shape == (4,)
    assert t["lm_head.weight"].shape == (a.vocab_size, 64)
    assert {e.name for e in expected_hf(a)} == set(t)


def test_tiny_original_layout_is_the_real_one(tiny_original):
    cfg = json.loads((tiny_original / "config.json").read_text())
    assert cfg["num_experts"] == 8 and cfg["experts_per_token"] == 4 and cfg["rope_ntk_beta"] == 32.0
    assert sorted(p.name for p in tiny_original.glob("*.safetensors")) == ["model.safetensors"]
    t = load_tensors(tiny_original)
    assert t["block.1.attn.qkv.weight"].shape == ((4 + 2 * 2) * 16, 64)
    assert t["block.1.mlp.mlp1_weight.blocks"].shape == (8, 128, 2, 16)
    assert {e.name for e in expected_original(PRESETS["tiny"])} == set(t)


def test_same_seed_same_weights_across_formats(tiny_hf, tiny_original):
    h, o = load_tensors(tiny_hf), load_tensors(tiny_original)
    for n in range(PRESETS["tiny"].num_hidden_layers):
        p, b = f"model.layers.{n}", f"block.{n}"
        qkv = np.concatenate([h[f"{p}.self_attn.{x}_proj.weight"] for x in "qkv"])
        np.testing.assert_array_equal(qkv, o[f"{b}.attn.qkv.weight"])
        np.testing.assert_array_equal(h[f"{p}.mlp.experts.gate_up_proj_blocks"], o[f"{b}.mlp.mlp1_weight.blocks"])
        np.testing.assert_array_equal(h[f"{p}.mlp.experts.down_proj_scales"], o[f"{b}.mlp.mlp2_weight.scales"])
        np.testing.assert_array_equal(h[f"{p}.self_attn.sinks"], o[f"{b}.attn.sinks"])
    np.testing.assert_array_equal(h["lm_head.weight"], o["unembedding.weight"])


def test_seed_changes_weights_and_weights_are_sane(tmp_path, tiny_hf):
    other = load_tensors(synth(tmp_path / "s8", preset="tiny", fmt="hf", seed=8))
    base = load_tensors(tiny_hf)
    assert not np.array_equal(other["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    # expert weights dequantize to roughly 1/sqrt(fan_in) std, so activations stay O(1)
    x = "model.layers.0.mlp.experts"
    w = decode_mxfp4(base[f"{x}.gate_up_proj_blocks"], base[f"{x}.gate_up_proj_scales"])
    assert 0.5 / 8 < w.std() < 2.0 / 8
    assert np.all(base[f"{x}.gate_up_proj_scales"] != 0xFF)


def test_bf16_rounding_is_round_to_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.0e38], dtype=np.float32)
    bits = float32_to_bf16_bits(x)
    back = (bits.astype(np.uint32) << 16).view(np.float32)
    # 1 + 2^-8 is a tie -> even (1.0); 1 + 3*2^-8 is a tie -> even (1 + 2^-6)
    np.testing.assert_array_equal(back[:4], np.array([1.0, 1.0, 1.015625, -2.5], dtype=np.float32))


@pytest.mark.parametrize("preset", ["20b", "120b"])
def test_real_presets_stream_in_bounded_chunks(preset):
    a = PRESETS[preset]
    params = logical_params(a)
    # every chunk a writer holds is at most CHUNK_BYTES (plus one row), whatever the tensor size
    assert max(p.rows_per_chunk * p.row_bytes for p in params.values()) <= CHUNK_BYTES + max(p.row_bytes for p in params.values())
    shapes = {name: (sum(params[k].shape[0] for k in keys), *params[keys[0]].shape[1:]) for name, keys in original_tensors(a)}
    E = 32 if preset == "20b" else 128
    assert shapes["block.0.mlp.mlp1_weight.blocks"] == (E, 5760, 90, 16)
    assert shapes["block.0.attn.qkv.weight"] == (5120, 2880)
    assert shapes["unembedding.weight"] == (201088, 2880)
    hf = {name for name, _ in hf_tensors(a)}
    assert "model.layers.23.mlp.experts.gate_up_proj_scales" in hf
    total = sum(params[k].nbytes for k in params)
    assert (12.5e9 if preset == "20b" else 60e9) < total < (14e9 if preset == "20b" else 66e9)


def test_synth_refuses_existing_destination(tmp_path):
    from gptoss_metal.converters import ConversionError

    (tmp_path / "x").mkdir()
    with pytest.raises(ConversionError, match="already exists"):
        synth(tmp_path / "x", preset="tiny")
    with pytest.raises(ConversionError, match="unknown preset"):
        synth(tmp_path / "y", preset="huge")


def test_synth_streams_with_small_peak_memory(tmp_path):
    """Writing the `small` preset (hundreds of MB) keeps RSS growth far below the file size."""
    import subprocess
    import sys

    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc (Linux) to read the peak RSS of a fresh process")
    # VmHWM belongs to the new process image (ru_maxrss would inherit pytest's own peak).
    code = (
        "import sys; from converters import synth;"
        "synth(sys.argv[1], preset='small', fmt='hf');"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "small")], capture_output=True, text=True, check=True)
    peak_kb = int(out.stdout.strip())
    size = sum(p.stat().st_size for p in (tmp_path / "small").glob("*.safetensors"))
    assert size > 400e6
    assert peak_kb * 1024 < 250e6, f"peak RSS {peak_kb / 1024:.0f} MB while writing {size / 1e6:.0f} MB"
    assert len(collect_tensors(tmp_path / "small")) > 50
