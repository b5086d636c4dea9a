"""Resolving a conversion source: a local folder, or a Hugging Face repo id to download.

Downloads go through huggingface_hub (resumable, cached, honours HF_HUB_OFFLINE and
HF_HOME/HF_HUB_CACHE) and fetch only the Hugging Face layout files: the official repos also
hold ``original/`` and ``metal/`` copies of the weights that would triple the download.
"""

from __future__ import annotations

import re
from pathlib import Path

from gptoss_metal.architecture import describe_weights_file

from .errors import ConversionError

HF_ALLOW_PATTERNS = [
    "config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "chat_template.jinja",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_repo_id(src: str) -> bool:
    return bool(_REPO_ID.match(src)) and not src.startswith((".", "/", "~"))


def download(repo_id: str, *, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """Fetch the files a conversion needs; returns the local snapshot folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HF_ALLOW_PATTERNS
        )
    except LocalEntryNotFoundError:
        raise ConversionError(
            f"{repo_id}: not in the local Hugging Face cache and downloading is not possible "
            "(offline, or HF_HUB_OFFLINE=1). Download it once with network access, or pass a local folder."
        ) from None
    except GatedRepoError:
        raise ConversionError(f"{repo_id}: gated repository; log in with `hf auth login` first") from None
    except RepositoryNotFoundError:
        raise ConversionError(f"{repo_id}: no such Hugging Face repository (or it is private)") from None
    except RevisionNotFoundError:
        raise ConversionError(f"{repo_id}: revision {revision!r} not found") from None
    except (HfHubHTTPError, OSError) as e:
        raise ConversionError(f"{repo_id}: download failed: {e}") from None
    return Path(path)


def resolve_source(src: str | Path, *, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """A local checkpoint folder for `src`: the path itself, or a hub download of a repo id."""
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConversionError(describe_weights_file(path) or f"{path}: expected a checkpoint folder, got a file")
        return path
    if isinstance(src, str) and looks_like_repo_id(src):
        return download(src, revision=revision, cache_dir=cache_dir)
    raise ConversionError(f"{src}: no such folder (and not a Hugging Face repo id like openai/gpt-oss-20b)")
