"""Every bad input a user can hand `gptoss convert` fails with a message naming file and tensor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptoss_metal.converters import ConversionError, convert
from helpers import decode_mxfp4, load_tensors

H, I, E, V, NH, NKV, HD = 64, 32, 4, 96, 4, 2, 16


def mini_weights(rng: np.random.Generator, layers: int = 1, h: int = H, i: int = I, e: int = E) -> dict[str, np.ndarray]:
    """HF-layout weights as numpy arrays; bf16 tensors are given as float32 and cast on save."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.1  # noqa: E731
    u8 = lambda *s, lo=0, hi=256: rng.integers(lo, hi, s).astype(np.uint8)  # noqa: E731
    w = {"model.embed_tokens.weight": f(V, h), "model.norm.weight": f(h) + 1, "lm_head.weight": f(V, h)}
    for n in range(layers):
        p = f"model.layers.{n}"
        w |= {
            f"{p}.input_layernorm.weight": f(h) + 1, f"{p}.post_attention_layernorm.weight": f(h) + 1,
            f"{p}.self_attn.q_proj.weight": f(NH * HD, h), f"{p}.self_attn.q_proj.bias": f(NH * HD),
            f"{p}.self_attn.k_proj.weight": f(NKV * HD, h), f"{p}.self_attn.k_proj.bias": f(NKV * HD),
            f"{p}.self_attn.v_proj.weight": f(NKV * HD, h), f"{p}.self_attn.v_proj.bias": f(NKV * HD),
            f"{p}.self_attn.o_proj.weight": f(h, NH * HD), f"{p}.self_attn.o_proj.bias": f(h),
            f"{p}.self_attn.sinks": f(NH), f"{p}.mlp.router.weight": f(e, h), f"{p}.mlp.router.bias": f(e),
            f"{p}.mlp.experts.gate_up_proj_blocks": u8(e, 2 * i, h // 32, 16),
            f"{p}.mlp.experts.gate_up_proj_scales": u8(e, 2 * i, h // 32, lo=0, hi=255),
            f"{p}.mlp.experts.gate_up_proj_bias": f(e, 2 * i),
            f"{p}.mlp.experts.down_proj_blocks": u8(e, h, i // 32, 16),
            f"{p}.mlp.experts.down_proj_scales": u8(e, h, i // 32, lo=0, hi=255),
            f"{p}.mlp.experts.down_proj_bias": f(e, h),
        }
    return w


def mini_config(layers: int = 1, h: int = H, i: int = I, e: int = E) -> dict:
    return {
        "model_type": "gpt_oss", "num_hidden_layers": layers, "num_local_experts": e, "num_experts_per_tok": min(2, e),
        "vocab_size": V, "hidden_size": h, "intermediate_size": i, "head_dim": HD,
        "num_attention_heads": NH, "num_key_value_heads": NKV, "sliding_window": 4,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "original_max_position_embeddings": 4096, "truncate": False},
        "quantization_config": {"quant_method": "mxfp4"},
    }


def write_mini(path: Path, weights: dict[str, np.ndarray], config: dict, bf16: bool = True) -> Path:
    path.mkdir(parents=True)
    arrs = {k: (mx.array(v).astype(mx.bfloat16) if (bf16 and v.dtype == np.float32) else mx.array(v)) for k, v in weights.items()}
    mx.save_safetensors(str(path / "model.safetensors"), arrs)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def mini(tmp_path):
    rng = np.random.default_rng(0)
    return mini_weights(rng), mini_config()


def _fails(tmp_path, weights, config, match: str):
    src = write_mini(tmp_path / "src", weights, config)
    with pytest.raises(ConversionError, match=match) as info:
        convert(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
    assert not list(tmp_path.glob(".dst.partial-*"))
    return str(info.value)


def test_the_mini_checkpoint_itself_converts(tmp_path, mini):
    convert(write_mini(tmp_path / "src", *mini), tmp_path / "dst")
    assert (tmp_path / "dst" / "model.safetensors").exists()


def test_missing_tensor(tmp_path, mini):
    w, c = mini
    del w["model.layers.0.self_attn.sinks"]
    assert "model.layers.0.self_attn.sinks" in _fails(tmp_path, w, c, "missing tensors")


def test_unexpected_tensor(tmp_path, mini):
    w, c = mini
    w["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
    msg = _fails(tmp_path, w, c, "unexpected tensors")
    assert "model.layers.0.extra.weight (in model.safetensors)" in msg


def test_shape_disagrees_with_config(tmp_path, mini):
    w, c = mini
    w["model.layers.0.mlp.router.weight"] = np.zeros((E + 1, H), np.float32)
    msg = _fails(tmp_path, w, c, "config.json implies")
    assert "model.layers.0.mlp.router.weight" in msg and "model.safetensors" in msg


def test_dtype_disagrees(tmp_path, mini):
    w, c = mini
    w["model.layers.0.mlp.experts.down_proj_scales"] = w["model.layers.0.mlp.experts.down_proj_scales"].astype(np.float32)
    _fails(tmp_path, w, c, r"down_proj_scales is BF16\[4, 64, 1\], but config.json implies U8\[4, 64, 1\]")


def test_nan_scale_byte(tmp_path, mini):
    w, c = mini
    w["model.layers.0.mlp.experts.down_proj_scales"][1, 2, 0] = 0xFF
    msg = _fails(tmp_path, w, c, "0xFF")
    assert "down_proj_scales" in msg and "1 MXFP4 scale" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_dense_values(tmp_path, mini, bad):
    w, c = mini
    w["model.layers.0.self_attn.q_proj.weight"][3, 4] = bad
    assert "q_proj.weight holds 1 non-finite" in _fails(tmp_path, w, c, "non-finite")


def test_non_finite_in_float32_checkpoints_too(tmp_path, mini):
    w, c = mini
    w["lm_head.weight"][0, 0] = np.nan
    src = write_mini(tmp_path / "src", w, c, bf16=False)
    with pytest.raises(ConversionError, match="lm_head.weight holds 1 non-finite"):
        convert(src, tmp_path / "dst")


@pytest.mark.parametrize(
    "change,match",
    [
        ({"model_type": "llama"}, "model_type"),
        ({"hidden_size": 48}, "multiple of 32"),
        ({"num_experts_per_tok": 9}, "experts_per_token"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "only yarn"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 32.0, "truncate": True}}, "truncate"),
        ({"num_hidden_layers": 0}, "positive integer"),
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
    ],
)
def test_unsupported_config(tmp_path, mini, change, match):
    w, c = mini
    _fails(tmp_path, w, c | change, match)


def test_missing_and_invalid_config(tmp_path, mini):
    w, c = mini
    src = write_mini(tmp_path / "src", w, c)
    (src / "config.json").write_text("{not json")
    with pytest.raises(ConversionError, match="invalid JSON"):
        convert(src, tmp_path / "dst")
    (src / "config.json").unlink()
    with pytest.raises(ConversionError, match="no config.json"):
        convert(src, tmp_path / "dst")


def test_truncated_shard(tmp_path, mini):
    src = write_mini(tmp_path / "src", *mini)
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ConversionError, match="truncated") as info:
        convert(src, tmp_path / "dst")
    assert "model.safetensors" in str(info.value)


def test_index_naming_a_missing_shard(tmp_path, mini):
    src = write_mini(tmp_path / "src", *mini)
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "model-00009.safetensors"}}))
    with pytest.raises(ConversionError, match="model-00009.safetensors, which does not exist"):
        convert(src, tmp_path / "dst")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ConversionError, match="no such folder"):
        convert(tmp_path / "nothing", tmp_path / "dst")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ConversionError, match="no .safetensors"):
        convert(tmp_path / "empty", tmp_path / "dst")


def test_cli_prints_user_errors_without_traceback(tmp_path, mini):
    w, c = mini
    w["model.layers.0.mlp.experts.down_proj_scales"][0, 0, 0] = 0xFF
    src = write_mini(tmp_path / "src", w, c)
    out = subprocess.run([sys.executable, "-m", "gptoss_metal.cli.main", "convert", str(src), str(tmp_path / "dst"), "--quiet"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "error:" in out.stderr and "0xFF" in out.stderr and "down_proj_scales" in out.stderr
    assert "Traceback" not in out.stderr


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layers=st.integers(1, 2),
    h_blocks=st.integers(1, 3),
    i_blocks=st.integers(1, 3),
    experts=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_any_shape_converts_bit_exactly(tmp_path_factory, layers, h_blocks, i_blocks, experts, seed):
    """Random architectures and random bytes (every FP4 code, every legal scale): exact round trip."""
    root = tmp_path_factory.mktemp("prop")
    h, i = 32 * h_blocks, 32 * i_blocks
    if h < NH:  # q/o projections are shaped by NH*HD, independent of h; keep h >= 32 anyway
        return
    rng = np.random.default_rng(seed)
    w = mini_weights(rng, layers, h, i, experts)
    src = write_mini(root / "src", w, mini_config(layers, h, i, experts) | {"num_experts_per_tok": 1})
    convert(src, root / "dst")
    out = load_tensors(root / "dst")
    for n in range(layers):
        x = f"model.layers.{n}.mlp.experts"
        mlp1 = decode_mxfp4(w[f"{x}.gate_up_proj_blocks"], w[f"{x}.gate_up_proj_scales"])
        for name, want in (("gate_proj", mlp1[:, 0::2]), ("up_proj", mlp1[:, 1::2]),
                           ("down_proj", decode_mxfp4(w[f"{x}.down_proj_blocks"], w[f"{x}.down_proj_scales"]))):
            got = mx.dequantize(mx.array(out[f"{x}.{name}.weight"]), mx.array(out[f"{x}.{name}.scales"]),
                                group_size=32, bits=4, mode="mxfp4", dtype=mx.float32)
            # float32 is the comparison domain: scale 254 x 6.0 overflows to inf there by definition
            with np.errstate(over="ignore"):
                want32 = want.astype(np.float32)
            np.testing.assert_array_equal(np.array(got), want32)
