"""The peers' own test data (openai/harmony, openai/gpt-oss), read from `../shared/peer-data/`.

The data is not ours and is not committed here: it lives beside the repository (SOURCES.txt there
names each file's commit). Tests built on it compare our public API with what the peers expect,
so a difference from them is a finding, not an expectation we wrote ourselves.

Data is read only inside tests and fixtures, never at import time: a fresh clone without
`../shared` collects the whole suite and skips the peer comparisons with one visible reason. Where
`CI` is set (CI always has the data beside the checkout) a missing file fails instead, so the
comparison stays enforced where it counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

PEER = Path(__file__).resolve().parents[2] / "shared" / "peer-data"
HARMONY = PEER / "harmony"
GPTOSS = PEER / "gptoss"


SKIP_REASON = "peer data not present: see README"


def require(path: Path) -> Path:
    """`path` if it exists; otherwise skip (a fresh clone) or fail (CI, where the data must be there)."""
    if path.exists():
        return path
    if os.environ.get("CI"):
        pytest.fail(f"peer data {path} is missing: CI expects ../shared/peer-data beside the repository "
                    f"(see its SOURCES.txt)")
    pytest.skip(SKIP_REASON)


def peer_file(relative: str) -> Path:
    return require(PEER / relative)


def harmony_text(relative: str) -> str:
    """A harmony fixture as openai/harmony's tests read it: CRLF -> LF, trailing whitespace trimmed."""
    return peer_file(f"harmony/{relative}").read_text(encoding="utf-8").replace("\r\n", "\n").rstrip()


def harmony_token_ids(relative: str) -> list[int]:
    """A fixture stored as whitespace-separated token ids."""
    return [int(x) for x in peer_file(f"harmony/{relative}").read_text().split()]


def sse_events(relative: str) -> list[dict]:
    """The JSON payloads of a recorded server-sent-event stream (`data:` lines)."""
    out = []
    for line in peer_file(relative).read_text(encoding="utf-8").splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                out.append(json.loads(data))
    return out
