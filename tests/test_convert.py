"""Conversion round trips: bit-exact MXFP4, identical outputs from both layouts, mlx-lm loads them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from gptoss_metal.converters import ConversionError, PRESETS, convert, inspect_checkpoint
from helpers import decode_mxfp4, load_tensors, u32_words_to_blocks


def test_runtime_layout_names_dtypes_and_config(tiny_runtime):
    cfg = json.loads((tiny_runtime / "config.json").read_text())
    assert cfg["model_type"] == "gpt_oss"
    assert cfg["quantization"] == {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    assert cfg["rope_scaling"]["truncate"] is False
    t = load_tensors(tiny_runtime)
    x = "model.layers.2.mlp.experts"
    assert t[f"{x}.gate_proj.weight"].dtype == np.uint32 and t[f"{x}.gate_proj.weight"].shape == (8, 64, 8)
    assert t[f"{x}.gate_proj.scales"].dtype == np.uint8 and t[f"{x}.gate_proj.scales"].shape == (8, 64, 2)
    assert t[f"{x}.down_proj.bias"].shape == (8, 64)
    assert "model.layers.0.self_attn.sinks" in t and "lm_head.weight" in t
    assert not any("gate_up" in k for k in t)
    assert (tiny_runtime / "generation_config.json").is_file()


def test_experts_dequantize_bit_exactly_to_the_source(tiny_hf, tiny_runtime):
    src, out = load_tensors(tiny_hf), load_tensors(tiny_runtime)
    for n in range(PRESETS["tiny"].num_hidden_layers):
        x = f"model.layers.{n}.mlp.experts"
        mlp1 = decode_mxfp4(src[f"{x}.gate_up_proj_blocks"], src[f"{x}.gate_up_proj_scales"])
        mlp2 = decode_mxfp4(src[f"{x}.down_proj_blocks"], src[f"{x}.down_proj_scales"])
        for name, want in (("gate_proj", mlp1[:, 0::2]), ("up_proj", mlp1[:, 1::2]), ("down_proj", mlp2)):
            w = mx.array(out[f"{x}.{name}.weight"])
            s = mx.array(out[f"{x}.{name}.scales"])
            got = np.array(mx.dequantize(w, s, group_size=32, bits=4, mode="mxfp4", dtype=mx.float32))
            np.testing.assert_array_equal(got, want)  # exact: reinterpreted, never re-quantized
            # and the bytes are literally the source bytes
            np.testing.assert_array_equal(u32_words_to_blocks(out[f"{x}.{name}.weight"]),
                                          (src[f"{x}.gate_up_proj_blocks"][:, (0 if name == "gate_proj" else 1)::2]
                                           if name != "down_proj" else src[f"{x}.down_proj_blocks"]))
        np.testing.assert_array_equal(out[f"{x}.gate_proj.bias"], src[f"{x}.gate_up_proj_bias"][:, 0::2])
        np.testing.assert_array_equal(out[f"{x}.up_proj.bias"], src[f"{x}.gate_up_proj_bias"][:, 1::2])


def test_both_source_layouts_convert_to_identical_files(tmp_path, tiny_original, tiny_runtime):
    r = convert(tiny_original, tmp_path / "from-original")
    assert r.layout == "original"
    a = sorted(p.name for p in tiny_runtime.glob("*.safetensors"))
    b = sorted(p.name for p in (tmp_path / "from-original").glob("*.safetensors"))
    assert a == b
    for name in a:
        assert (tiny_runtime / name).read_bytes() == (tmp_path / "from-original" / name).read_bytes()


def test_runtime_source_reconverts_to_identical_files_and_reshards(tmp_path, tiny_runtime):
    convert(tiny_runtime, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tiny_runtime / "model.safetensors").read_bytes()
    r = convert(tiny_runtime, tmp_path / "sharded", max_shard_bytes=20_000_000)
    assert len(r.files) >= 3
    assert load_tensors(tmp_path / "sharded").keys() == load_tensors(tiny_runtime).keys()


def test_original_folder_inside_a_repo_is_found(tmp_path, tiny_original):
    repo = tmp_path / "repo"
    repo.mkdir()
    os.symlink(tiny_original, repo / "original")
    (repo / "tokenizer.json").write_text("{}")
    r = convert(repo, tmp_path / "out")
    assert r.layout == "original"
    assert (tmp_path / "out" / "tokenizer.json").read_text() == "{}"


def _mlx_lm_logits(path: Path, tokens: list[int]) -> np.ndarray:
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(path))
    return np.array(model(mx.array([tokens])).astype(mx.float32))


TOKENS = [200006, 17360, 200008, 12194, 11, 2375, 0, 481, 9, 200007, 99, 5, 6, 7, 8, 9, 10, 11, 12, 13]


def test_mlx_lm_loads_the_conversion_with_the_logits_of_the_source(tiny_hf, tiny_runtime):
    # mlx-lm can read the HF layout itself (it splits experts at load time): same numbers both ways.
    np.testing.assert_array_equal(_mlx_lm_logits(tiny_runtime, TOKENS), _mlx_lm_logits(tiny_hf, TOKENS))


# -- an independent writer: plain mx.save_safetensors, not our synth --------------------------------


def _independent_hf_checkpoint(path: Path, seed: int) -> dict[str, mx.array]:
    """A tiny HF-layout checkpoint written with MLX's own safetensors writer (one shard)."""
    rng = np.random.default_rng(seed)
    H, I, E, V, L, nh, nkv, hd = 64, 32, 4, 201088, 2, 4, 1, 16
    bf = lambda *s, std=0.1: mx.array(rng.standard_normal(s).astype(np.float32) * std).astype(mx.bfloat16)  # noqa: E731
    u8 = lambda *s, lo=0, hi=256: mx.array(rng.integers(lo, hi, s).astype(np.uint8))  # noqa: E731
    w = {"model.embed_tokens.weight": bf(V, H, std=1.0), "model.norm.weight": bf(H, std=0.0) + 1,
         "lm_head.weight": bf(V, H, std=0.125)}
    for n in range(L):
        p = f"model.layers.{n}"
        w |= {
            f"{p}.input_layernorm.weight": bf(H) + 1, f"{p}.post_attention_layernorm.weight": bf(H) + 1,
            f"{p}.self_attn.q_proj.weight": bf(nh * hd, H, std=0.125), f"{p}.self_attn.q_proj.bias": bf(nh * hd),
            f"{p}.self_attn.k_proj.weight": bf(nkv * hd, H, std=0.125), f"{p}.self_attn.k_proj.bias": bf(nkv * hd),
            f"{p}.self_attn.v_proj.weight": bf(nkv * hd, H, std=0.125), f"{p}.self_attn.v_proj.bias": bf(nkv * hd),
            f"{p}.self_attn.o_proj.weight": bf(H, nh * hd, std=0.125), f"{p}.self_attn.o_proj.bias": bf(H),
            f"{p}.self_attn.sinks": bf(nh, std=1.0),
            f"{p}.mlp.router.weight": bf(E, H, std=0.125), f"{p}.mlp.router.bias": bf(E),
            f"{p}.mlp.experts.gate_up_proj_blocks": u8(E, 2 * I, H // 32, 16),
            f"{p}.mlp.experts.gate_up_proj_scales": u8(E, 2 * I, H // 32, lo=119, hi=124),
            f"{p}.mlp.experts.gate_up_proj_bias": bf(E, 2 * I),
            f"{p}.mlp.experts.down_proj_blocks": u8(E, H, I // 32, 16),
            f"{p}.mlp.experts.down_proj_scales": u8(E, H, I // 32, lo=119, hi=124),
            f"{p}.mlp.experts.down_proj_bias": bf(E, H),
        }
    path.mkdir()
    mx.save_safetensors(str(path / "model.safetensors"), w)
    cfg = {
        "model_type": "gpt_oss", "num_hidden_layers": L, "num_local_experts": E, "num_experts_per_tok": 2,
        "vocab_size": V, "hidden_size": H, "intermediate_size": I, "head_dim": hd,
        "num_attention_heads": nh, "num_key_value_heads": nkv, "sliding_window": 4,
        "rope_theta": 150000, "rms_norm_eps": 1e-5, "swiglu_limit": 7.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "original_max_position_embeddings": 4096, "truncate": False},
        "quantization_config": {"quant_method": "mxfp4"},
    }
    (path / "config.json").write_text(json.dumps(cfg))
    return w


def test_independently_written_hf_checkpoint_converts_and_mlx_lm_agrees(tmp_path):
    _independent_hf_checkpoint(tmp_path / "indep", seed=3)
    convert(tmp_path / "indep", tmp_path / "out")
    np.testing.assert_array_equal(_mlx_lm_logits(tmp_path / "out", TOKENS), _mlx_lm_logits(tmp_path / "indep", TOKENS))


def test_independently_written_original_checkpoint_converts_like_its_hf_twin(tmp_path):
    """Re-express the independent HF weights in OpenAI's original/ names; both must convert identically."""
    w = _independent_hf_checkpoint(tmp_path / "hf", seed=4)
    o = {"embedding.weight": w["model.embed_tokens.weight"], "norm.scale": w["model.norm.weight"],
         "unembedding.weight": w["lm_head.weight"]}
    for n in range(2):
        p, b = f"model.layers.{n}", f"block.{n}"
        a = f"{p}.self_attn"
        o |= {
            f"{b}.attn.norm.scale": w[f"{p}.input_layernorm.weight"],
            f"{b}.attn.qkv.weight": mx.concatenate([w[f"{a}.{x}_proj.weight"] for x in "qkv"]),
            f"{b}.attn.qkv.bias": mx.concatenate([w[f"{a}.{x}_proj.bias"] for x in "qkv"]),
            f"{b}.attn.sinks": w[f"{a}.sinks"], f"{b}.attn.out.weight": w[f"{a}.o_proj.weight"],
            f"{b}.attn.out.bias": w[f"{a}.o_proj.bias"], f"{b}.mlp.norm.scale": w[f"{p}.post_attention_layernorm.weight"],
            f"{b}.mlp.gate.weight": w[f"{p}.mlp.router.weight"], f"{b}.mlp.gate.bias": w[f"{p}.mlp.router.bias"],
            f"{b}.mlp.mlp1_weight.blocks": w[f"{p}.mlp.experts.gate_up_proj_blocks"],
            f"{b}.mlp.mlp1_weight.scales": w[f"{p}.mlp.experts.gate_up_proj_scales"],
            f"{b}.mlp.mlp1_bias": w[f"{p}.mlp.experts.gate_up_proj_bias"],
            f"{b}.mlp.mlp2_weight.blocks": w[f"{p}.mlp.experts.down_proj_blocks"],
            f"{b}.mlp.mlp2_weight.scales": w[f"{p}.mlp.experts.down_proj_scales"],
            f"{b}.mlp.mlp2_bias": w[f"{p}.mlp.experts.down_proj_bias"],
        }
    (tmp_path / "orig").mkdir()
    mx.save_safetensors(str(tmp_path / "orig" / "model.safetensors"), o)
    (tmp_path / "orig" / "config.json").write_text(json.dumps({
        "num_hidden_layers": 2, "num_experts": 4, "experts_per_token": 2, "vocab_size": 201088,
        "hidden_size": 64, "intermediate_size": 32, "swiglu_limit": 7.0, "head_dim": 16,
        "num_attention_heads": 4, "num_key_value_heads": 1, "sliding_window": 4,
        "initial_context_length": 4096, "rope_theta": 150000, "rope_scaling_factor": 32.0,
        "rope_ntk_alpha": 1, "rope_ntk_beta": 32}))
    convert(tmp_path / "hf", tmp_path / "a")
    convert(tmp_path / "orig", tmp_path / "b")
    ta, tb = load_tensors(tmp_path / "a"), load_tensors(tmp_path / "b")
    assert ta.keys() == tb.keys()
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)
    np.testing.assert_array_equal(_mlx_lm_logits(tmp_path / "b", TOKENS), _mlx_lm_logits(tmp_path / "hf", TOKENS))


# -- dense quantization -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,bits", [("q8", 8), ("q4", 4)])
def test_quantize_dense_is_mlx_affine_and_loads_in_mlx_lm(tmp_path, tiny_original, tiny_runtime, kind, bits):
    r = convert(tiny_original, tmp_path / kind, quantize_dense=kind)
    assert r.quantized_modules == 2 + 4 * PRESETS["tiny"].num_hidden_layers
    cfg = json.loads((tmp_path / kind / "config.json").read_text())
    assert cfg["quantization"]["model.layers.1.self_attn.k_proj"] == {"group_size": 64, "bits": bits, "mode": "affine"}
    assert cfg["quantization"]["lm_head"]["bits"] == bits
    t, ref = load_tensors(tmp_path / kind), load_tensors(tiny_runtime)
    for module in ("model.layers.1.self_attn.k_proj", "model.embed_tokens", "lm_head"):
        w = mx.array(ref[f"{module}.weight"]).astype(mx.bfloat16)
        qw, qs, qb = mx.quantize(w, group_size=64, bits=bits, mode="affine")
        np.testing.assert_array_equal(t[f"{module}.weight"], np.array(qw))
        np.testing.assert_array_equal(t[f"{module}.scales"], np.array(qs.astype(mx.float32)))
        np.testing.assert_array_equal(t[f"{module}.biases"], np.array(qb.astype(mx.float32)))
    assert "model.layers.0.mlp.router.weight" in t and "model.layers.0.mlp.router.scales" not in t
    logits = _mlx_lm_logits(tmp_path / kind, TOKENS)
    assert np.isfinite(logits).all()
    s = inspect_checkpoint(tmp_path / kind)
    assert s.bytes_per_token < inspect_checkpoint(tiny_runtime).bytes_per_token
    # quantizing an already-quantized runtime checkpoint again keeps its modules as they are
    r2 = convert(tmp_path / kind, tmp_path / f"{kind}-again", quantize_dense=kind)
    assert r2.quantized_modules == 0


# -- atomicity -----------------------------------------------------------------------------------------


def test_existing_destination_needs_force(tmp_path, tiny_hf):
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("precious")
    with pytest.raises(ConversionError, match="already exists"):
        convert(tiny_hf, tmp_path / "dst")
    assert (tmp_path / "dst" / "keep.txt").read_text() == "precious"
    convert(tiny_hf, tmp_path / "dst", force=True)
    assert not (tmp_path / "dst" / "keep.txt").exists()
    assert (tmp_path / "dst" / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["dst"]


def test_kill_9_mid_conversion_leaves_no_destination(tmp_path, tiny_hf):
    marker = tmp_path / "started"
    code = f"""
import time, pathlib
from gptoss_metal.converters import convert
def advance(n):
    pathlib.Path({str(marker)!r}).touch()
    time.sleep(3600)
convert({str(tiny_hf)!r}, {str(tmp_path / "dst")!r}, on_advance=advance)
"""
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert time.time() < deadline and proc.poll() is None, "conversion did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "dst").exists()
    partials = list(tmp_path.glob(".dst.partial-*"))
    assert len(partials) == 1  # the half-written sibling, never under the real name
    convert(tiny_hf, tmp_path / "dst")  # the next run succeeds and sweeps the stale partial
    assert not list(tmp_path.glob(".dst.partial-*"))
    assert (tmp_path / "dst" / "model.safetensors").exists()


def test_refuses_to_overwrite_its_source(tmp_path, tiny_hf):
    with pytest.raises(ConversionError, match="overwrite the source"):
        convert(tiny_hf, tiny_hf, force=True)
