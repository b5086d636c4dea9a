"""SRC as a Hugging Face repo id, resolved offline from a pre-populated hub cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from gptoss_metal.converters.hub import HF_ALLOW_PATTERNS, looks_like_repo_id


def _populate_cache(cache, repo_id: str, source) -> None:
    """Lay out files the way huggingface_hub stores them: blobs + snapshot symlinks + refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    blobs = repo_dir / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    for i, f in enumerate(sorted(source.iterdir())):
        blob = blobs / f"blob{i:04d}"
        shutil.copyfile(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)


def test_repo_id_heuristic():
    assert looks_like_repo_id("openai/gpt-oss-20b")
    assert looks_like_repo_id("mlx-community/gpt-oss-20b-MXFP4-Q8")
    assert not looks_like_repo_id("./models/x")
    assert not looks_like_repo_id("/abs/path")
    assert not looks_like_repo_id("a/b/c")
    # only the HF layout is fetched, never the original/ and metal/ copies of the weights
    assert not any(p.startswith(("original", "metal", "*")) for p in HF_ALLOW_PATTERNS)


def test_convert_from_repo_id_offline_with_a_populated_cache(tmp_path, tiny_hf):
    cache = tmp_path / "hub"
    _populate_cache(cache, "acme/gpt-oss-tiny", tiny_hf)
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-m", "gptoss_metal.cli.main", "convert", "acme/gpt-oss-tiny", str(tmp_path / "dst"), "--quiet"],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "dst" / "generation_config.json").is_file()
    assert (tmp_path / "dst" / "model.safetensors").read_bytes()[:8]


def test_unknown_repo_offline_is_a_clear_error(tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "empty"), HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-m", "gptoss_metal.cli.main", "convert", "acme/not-here", str(tmp_path / "dst"), "--quiet"],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode == 1
    assert "not in the local Hugging Face cache" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("src", ["missing/dir/x", "./nope"])
def test_missing_local_path(tmp_path, src):
    from gptoss_metal.converters import ConversionError, convert

    with pytest.raises(ConversionError):
        convert(src, tmp_path / "dst")
