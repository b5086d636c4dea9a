"""Checkpoint folders: which files hold the weights, and what users download by mistake.

The converter and the loader both read folders of weights; these checks live in the package both
may import, so that a GGUF file, a PyTorch pickle, another architecture, re-quantized experts, two
sets of shards or a link out of the folder get the same message from `gptoss convert` and from the
loader.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from .errors import CheckpointError

GPT_OSS_RELEASE = "openai/gpt-oss-20b (or -120b)"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SHARD = re.compile(r"^(?P<stem>.+?)-(?P<i>\d+)-of-(?P<n>\d+)\.safetensors$")


def _is_gguf(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def describe_weights_file(path: Path) -> Optional[str]:
    """What a single file handed over instead of a checkpoint folder is, if we can tell."""
    path = Path(path)
    if _is_gguf(path):
        return (f"{path} is a GGUF file (llama.cpp's format, usually re-quantized): gptoss converts gpt-oss's "
                f"safetensors release, e.g. `gptoss convert {GPT_OSS_RELEASE.split()[0]} DST`")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return (f"{path} is a PyTorch weights file: gptoss reads only safetensors (loading a pickled PyTorch file "
                f"can run code), from a checkpoint folder such as {GPT_OSS_RELEASE}")
    if path.suffix.lower() == ".safetensors":
        return f"{path} is a single weights file: pass the folder that holds it and its config.json"
    return None


def foreign_weights(directory: Path) -> Optional[str]:
    """Why a folder without .safetensors files is not a checkpoint we read (GGUF, PyTorch), if it is one of those."""
    directory = Path(directory)
    try:
        files = sorted(p for p in directory.iterdir() if p.is_file())
    except OSError:
        return None
    gguf = [p.name for p in files if _is_gguf(p)]
    if gguf:
        return (f"{directory} holds GGUF files ({', '.join(gguf[:3])}), llama.cpp's format: gptoss converts gpt-oss's "
                f"safetensors release, e.g. `gptoss convert {GPT_OSS_RELEASE.split()[0]} DST`")
    pickles = [p.name for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        return (f"{directory} holds PyTorch weights ({', '.join(pickles[:3])}) and no .safetensors: gptoss reads only "
                f"safetensors (loading pickled PyTorch files can run code); use a safetensors release such as "
                f"{GPT_OSS_RELEASE}")
    return None


def foreign_model_type(cfg: Mapping[str, Any], where: str) -> Optional[str]:
    """A config of another architecture (llama, qwen, ...), said as such."""
    model_type = cfg.get("model_type")
    if model_type is None or model_type == "gpt_oss":
        return None
    arch = cfg.get("architectures")
    named = f" ({', '.join(map(str, arch))})" if isinstance(arch, list) and arch else ""
    return (f"{where}: model_type {model_type!r}{named} is not gpt-oss: gptoss runs gpt-oss-20b and gpt-oss-120b "
            f"({GPT_OSS_RELEASE})")


def affine_experts(names: Iterable[str]) -> Optional[str]:
    """Experts re-quantized with MLX's affine mode (they carry `.biases`): not gpt-oss's MXFP4 bytes."""
    requantized = sorted(n for n in names if ".mlp.experts." in n and n.endswith(".biases"))
    if not requantized:
        return None
    return (f"its experts were re-quantized with affine quantization ({requantized[0]}); gptoss runs gpt-oss's "
            f"original MXFP4 experts. Convert from {GPT_OSS_RELEASE}, or use an MXFP4 MLX build such as *-MXFP4-Q8")


def _shard_sets(names: Iterable[str]) -> dict[str, list[str]]:
    """Safetensors file names grouped into sets: `stem-*-of-N` per (stem, N); any other name is a set of one."""
    sets: dict[str, list[str]] = {}
    for name in sorted(names):
        m = _SHARD.match(name)
        key = f"{m['stem']}-*-of-{m['n']}.safetensors" if m else name
        sets.setdefault(key, []).append(name)
    return sets


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_link(directory: Path, path: Path) -> None:
    if not path.is_symlink():
        return
    target = path.resolve()
    if not target.exists():
        raise CheckpointError(f"{path} is a broken symbolic link (to {target})")
    folder = directory.resolve()
    if _inside(target, folder):
        return
    # a Hugging Face cache: snapshots/<revision>/... link to the repository's blobs/
    for ancestor in folder.parents:
        if ancestor.name == "snapshots" and _inside(target, ancestor.parent / "blobs"):
            return
    raise CheckpointError(
        f"{path} is a symbolic link to {target}, outside the checkpoint folder: gptoss reads weights only inside "
        "the folder (or a Hugging Face cache's blobs). Copy the file in, or convert the folder it belongs to.")


def check_weight_files(directory: Path, files: Sequence[str], *, from_index: bool) -> None:
    """The weight files about to be read are one complete set, inside the folder; else say what is wrong.

    `files`: the names an index lists (`from_index`), or every .safetensors file of the folder.
    """
    directory = Path(directory)
    present = sorted(p.name for p in directory.glob("*.safetensors"))
    if from_index:
        extra = sorted(set(present) - set(files))
        if extra:
            raise CheckpointError(
                f"{directory}: model.safetensors.index.json names {len(set(files))} file(s), but the folder also "
                f"holds {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}: two sets of shards? Keep one set "
                "and its index")
    else:
        sets = _shard_sets(files)
        if len(sets) > 1:
            shown = " and ".join(f"{k} ({len(v)} file{'s' if len(v) > 1 else ''})" for k, v in list(sets.items())[:3])
            raise CheckpointError(
                f"{directory} holds {len(sets)} sets of weights, {shown}: a newer download next to an older one? "
                "Keep one set")
        for key, names in sets.items():
            m = _SHARD.match(names[0])
            if m:
                want = {f"{m['stem']}-{i:0{len(m['i'])}d}-of-{m['n']}.safetensors" for i in range(1, int(m["n"]) + 1)}
                missing = sorted(want - set(names))
                if missing:
                    raise CheckpointError(
                        f"{directory}: the shards {key} are incomplete, {', '.join(missing[:4])} missing "
                        "(an interrupted download?)")
    for name in files:
        _check_link(directory, directory / name)
