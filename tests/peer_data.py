"""The peers' own test data (openai/harmony, openai/gpt-oss), read from `../shared/peer-data/`.

The data is not ours and is not committed here: it lives beside the repository (SOURCES.txt there
names each file's commit). Tests built on it compare our public API with what the peers expect,
so a difference from them is a finding, not an expectation we wrote ourselves. A missing folder
fails loudly instead of skipping: the comparison is part of the suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PEER = Path(__file__).resolve().parents[2] / "shared" / "peer-data"
HARMONY = PEER / "harmony"
GPTOSS = PEER / "gptoss"


def peer_file(relative: str) -> Path:
    path = PEER / relative
    if not path.is_file():
        pytest.fail(f"peer data {path} is missing: the suite expects ../shared/peer-data beside the repository "
                    f"(see its SOURCES.txt)")
    return path


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
