"""What users download by mistake, handed to `gptoss convert` (through the CLI) and to the loader:
a GGUF file, an MLX-community folder with re-quantized experts, PyTorch .bin weights, another
architecture, two sets of shards, a shard linked from outside the folder. Each gets one clear line
naming the problem, exit status 1 and no output folder (nor a partial one)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from gptoss_metal.converters import ConversionError, convert
from gptoss_metal.metal_runtime import load
from gptoss_metal.metal_runtime.errors import ModelLoadError
from test_convert_errors import mini_config, mini_weights, write_mini


def cli_convert(src: Path, dst: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptoss_metal.cli.main", "convert", str(src), str(dst), "--quiet"],
                          capture_output=True, text=True, env=dict(os.environ, COLUMNS="4000"))


def assert_refused(src: Path, tmp_path: Path, *needles: str) -> str:
    """Through the CLI: exit 1, one error line holding every needle, no traceback, no output folder."""
    dst = tmp_path / "out"
    out = cli_convert(src, dst)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "error:" in out.stderr
    flat = " ".join(out.stderr.split())
    for needle in needles:
        assert needle in flat, flat
    assert not dst.exists() and not list(tmp_path.glob(".out.partial-*"))
    return flat


def load_refused(folder: Path, *needles: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        load(folder)
    for needle in needles:
        assert needle in str(info.value)


@pytest.fixture
def mini_hf(tmp_path) -> Path:
    return write_mini(tmp_path / "src", mini_weights(np.random.default_rng(0)), mini_config())


# -- GGUF ------------------------------------------------------------------------------------


def _gguf(path: Path) -> Path:
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(64))
    return path


def test_a_gguf_file(tmp_path):
    f = _gguf(tmp_path / "gpt-oss-20b-Q4_K_M.gguf")
    assert_refused(f, tmp_path, "is a GGUF file", "llama.cpp", "gptoss convert openai/gpt-oss-20b")
    renamed = _gguf(tmp_path / "model-download")  # known by its magic bytes too
    assert_refused(renamed, tmp_path, "is a GGUF file")


def test_a_folder_of_gguf_files(tmp_path):
    folder = tmp_path / "gguf-repo"
    folder.mkdir()
    _gguf(folder / "gpt-oss-20b-MXFP4.gguf")
    (folder / "README.md").write_text("quantized with llama.cpp")
    assert_refused(folder, tmp_path, "holds GGUF files", "gpt-oss-20b-MXFP4.gguf")
    load_refused(folder, "holds GGUF files")


# -- PyTorch ---------------------------------------------------------------------------------


def test_pytorch_bin_weights(tmp_path):
    folder = tmp_path / "torch-repo"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(mini_config()))
    marker = tmp_path / "unpickled"
    # a pickle that would create a file if anything loaded it: nothing may
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    (folder / "pytorch_model.bin").write_bytes(payload)
    assert_refused(folder, tmp_path, "holds PyTorch weights", "pytorch_model.bin", "safetensors")
    assert_refused(folder / "pytorch_model.bin", tmp_path, "is a PyTorch weights file")
    load_refused(folder, "holds PyTorch weights")
    assert not marker.exists()


# -- another architecture --------------------------------------------------------------------


def test_a_llama_checkpoint(tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 1,
           "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 96}
    (folder / "config.json").write_text(json.dumps(cfg))
    w = {"model.embed_tokens.weight": mx.zeros((96, 64)), "model.layers.0.mlp.gate_proj.weight": mx.zeros((128, 64)),
         "model.layers.0.self_attn.q_proj.weight": mx.zeros((64, 64)), "lm_head.weight": mx.zeros((96, 64))}
    mx.save_safetensors(str(folder / "model.safetensors"), w)
    assert_refused(folder, tmp_path, "model_type 'llama' (LlamaForCausalLM) is not gpt-oss")
    load_refused(folder, "model_type 'llama'", "is not gpt-oss")


def test_a_rounded_yarn_range_is_refused_by_both(tmp_path, tiny_runtime):
    """`rope_scaling.truncate=true` (Hugging Face's option) rounds YaRN's range, which gpt-oss does not:
    one config reader, one rule, the same message from the converter and the loader."""
    folder = tmp_path / "truncated-yarn"
    shutil.copytree(tiny_runtime, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_scaling"]["truncate"] = True
    (folder / "config.json").write_text(json.dumps(cfg))
    needle = "rope_scaling.truncate=true (gpt-oss uses the unrounded YaRN range)"
    assert_refused(folder, tmp_path, needle)
    load_refused(folder, needle, "config.json: unsupported config")


# -- re-quantized experts (MLX community, another mode) ---------------------------------------


def test_an_mlx_folder_with_affine_4bit_experts(tmp_path, tiny_runtime):
    """What `mlx_lm.convert -q` makes of gpt-oss: experts dequantized and re-quantized affine 4-bit."""
    folder = tmp_path / "gpt-oss-4bit"
    shutil.copytree(tiny_runtime, folder)
    (folder / "model.safetensors.index.json").unlink()
    f = folder / "model.safetensors"
    w = mx.load(str(f))
    for name in [n for n in w if ".mlp.experts." in n and n.endswith(".scales")]:
        base = name[: -len(".scales")]
        dense = mx.dequantize(w[base + ".weight"], w[name], group_size=32, bits=4, mode="mxfp4")
        qw, qs, qb = mx.quantize(dense, group_size=64, bits=4, mode="affine")
        w |= {base + ".weight": qw, name: qs, base + ".biases": qb}
    mx.save_safetensors(str(f), w)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization"] = cfg["quantization_config"] = {"group_size": 64, "bits": 4}
    (folder / "config.json").write_text(json.dumps(cfg))
    msg = assert_refused(folder, tmp_path, "re-quantized with affine quantization", "MXFP4")
    assert "experts.down_proj.biases" in msg or "experts.gate_proj.biases" in msg
    load_refused(folder, "re-quantized with affine quantization")


# -- two sets of shards ----------------------------------------------------------------------


def _split(folder: Path, n: int, stem: str = "model") -> list[str]:
    """Re-save model.safetensors as n shards stem-0000i-of-0000n (no index)."""
    w = mx.load(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(w)
    files = []
    for i in range(n):
        part = {k: w[k] for k in names[i::n]}
        files.append(f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors")
        mx.save_safetensors(str(folder / files[-1]), part)
    return files


def test_two_sets_of_shards(tmp_path, mini_hf):
    _split(mini_hf, 2)
    shutil.copy(mini_hf / "model-00001-of-00002.safetensors", mini_hf / "model-00001-of-00003.safetensors")
    assert_refused(mini_hf, tmp_path, "holds 2 sets of weights", "model-*-of-00002.safetensors (2 files)",
                   "model-*-of-00003.safetensors (1 file)")


def test_an_index_next_to_shards_it_does_not_name(tmp_path, mini_hf):
    files = _split(mini_hf, 2)
    index = {"weight_map": {k: f for f in files for k in mx.load(str(mini_hf / f))}}
    (mini_hf / "model.safetensors.index.json").write_text(json.dumps(index))
    convert(mini_hf, tmp_path / "fine")  # the set and its index alone: converts
    shutil.copy(mini_hf / files[0], mini_hf / "model-00001-of-00004.safetensors")
    assert_refused(mini_hf, tmp_path, "index.json names 2 file(s)", "model-00001-of-00004.safetensors",
                   "two sets of shards")


def test_an_incomplete_set_of_shards(tmp_path, mini_hf):
    _split(mini_hf, 3)
    (mini_hf / "model-00002-of-00003.safetensors").unlink()
    assert_refused(mini_hf, tmp_path, "incomplete", "model-00002-of-00003.safetensors missing")


def test_the_loader_refuses_two_sets_too(tmp_path, tiny_runtime):
    folder = tmp_path / "m"
    shutil.copytree(tiny_runtime, folder)
    shutil.copy(folder / "model.safetensors", folder / "model-00001-of-00002.safetensors")
    load_refused(folder, "names 1 file(s)", "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").unlink()
    load_refused(folder, "holds 2 sets of weights")


# -- symbolic links --------------------------------------------------------------------------


def test_a_shard_linked_from_outside_the_folder(tmp_path, mini_hf):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(mini_hf / "model.safetensors", elsewhere / "model.safetensors")
    os.symlink(elsewhere / "model.safetensors", mini_hf / "model.safetensors")
    assert_refused(mini_hf, tmp_path, "is a symbolic link to", str(elsewhere / "model.safetensors"),
                   "outside the checkpoint folder")
    (mini_hf / "model.safetensors").unlink()
    os.symlink(tmp_path / "nothing.safetensors", mini_hf / "model.safetensors")
    assert_refused(mini_hf, tmp_path, "broken symbolic link")


def test_links_inside_the_folder_and_into_a_hugging_face_cache_are_fine(tmp_path, mini_hf):
    # the layout huggingface_hub writes: snapshots/<revision>/<file> -> ../../blobs/<hash>
    repo = tmp_path / "hub" / "models--openai--gpt-oss-mini"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for f in mini_hf.iterdir():
        shutil.copy(f, blobs / f"sha-{f.name}")
        os.symlink(Path("..") / ".." / "blobs" / f"sha-{f.name}", snap / f.name)
    convert(snap, tmp_path / "from-cache")
    inside = tmp_path / "inside"
    inside.mkdir()
    shutil.copy(mini_hf / "config.json", inside / "config.json")
    (inside / "weights").mkdir()
    shutil.copy(mini_hf / "model.safetensors", inside / "weights" / "real.safetensors")
    os.symlink(inside / "weights" / "real.safetensors", inside / "model.safetensors")
    convert(inside, tmp_path / "from-inside")
    assert (tmp_path / "from-cache" / "config.json").exists() and (tmp_path / "from-inside" / "config.json").exists()


def test_the_loader_refuses_a_shard_linked_from_outside(tmp_path, tiny_runtime):
    folder = tmp_path / "m"
    shutil.copytree(tiny_runtime, folder)
    shutil.move(folder / "model.safetensors", tmp_path / "shared.safetensors")
    os.symlink(tmp_path / "shared.safetensors", folder / "model.safetensors")
    load_refused(folder, "outside the checkpoint folder")


def test_api_errors_are_conversion_errors(tmp_path):
    with pytest.raises(ConversionError, match="GGUF"):
        convert(_gguf(tmp_path / "x.gguf"), tmp_path / "out")
