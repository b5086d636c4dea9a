"""Shared fixtures: tiny synthetic checkpoints written once per test session."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Nothing in the test suite may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# ... nor the user's own data folder (conversations, pulled models): every command a test runs, in this
# process or a child, writes under a folder of the test session's.
os.environ["GPTOSS_DATA_DIR"] = tempfile.mkdtemp(prefix="gptoss-test-data-")

from gptoss_metal.converters import convert, synth  # noqa: E402


@pytest.fixture(scope="session")
def ckpt_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpts")


@pytest.fixture(scope="session")
def tiny_hf(ckpt_root) -> Path:
    return synth(ckpt_root / "tiny-hf", preset="tiny", fmt="hf", seed=7)


@pytest.fixture(scope="session")
def tiny_original(ckpt_root) -> Path:
    return synth(ckpt_root / "tiny-original", preset="tiny", fmt="original", seed=7)


@pytest.fixture(scope="session")
def tiny_runtime(ckpt_root, tiny_hf) -> Path:
    return convert(tiny_hf, ckpt_root / "tiny-runtime").destination
