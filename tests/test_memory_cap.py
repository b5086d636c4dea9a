"""gpt-oss widths under a memory cap of about half their weights: same tokens, not killed.

Each model is written at gpt-oss's real width (20b: hidden 2880, 32 experts, 64 heads; 120b: 128
experts) with a few layers and a 32768-token vocabulary (CPU time), converted, and run in a child
process twice: alone, and alone in a memory cgroup whose limit is half the weights, where it loads with
the default budget (what the cgroup leaves). The capped run must produce the same greedy and seeded
tokens and not be killed; the same model loaded whole under the same cap must be (the cap binds).
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from gptoss_metal.converters import PRESETS, convert, synth
from memory_cap import run_capped, unavailable, weight_bytes, worker

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]
TIMEOUT_S = 900
RUN = ("--prompt-tokens", "16", "--tokens", "6")


def _model(tmp_path_factory, preset: str, layers: int):
    root = tmp_path_factory.mktemp(f"cap-{preset}")
    arch = dataclasses.replace(PRESETS[preset], num_hidden_layers=layers, vocab_size=32768, layer_types=())
    src = synth(root / "hf", arch=arch, fmt="hf", seed=0)
    dst = convert(src, root / "runtime").destination
    shutil.rmtree(src)
    yield dst
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def w20(tmp_path_factory):
    yield from _model(tmp_path_factory, "20b", 8)


@pytest.fixture(scope="module")
def w120(tmp_path_factory):
    yield from _model(tmp_path_factory, "120b", 2)


def _same_tokens_under_half(model, control: bool) -> dict:
    import subprocess

    alone = subprocess.run(worker(model, *RUN, "--max-memory-gib", "1000"), capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    assert alone.returncode == 0, alone.stderr[-3000:]
    whole = __import__("json").loads(alone.stdout.strip().splitlines()[-1])
    assert not whole["cached"]
    cap = weight_bytes(model) // 2
    capped = run_capped(worker(model, *RUN), cap, TIMEOUT_S)
    assert not capped.killed and capped.returncode == 0, capped.stderr[-3000:]
    got = capped.report()
    assert got["cached"] and got["greedy"] == whole["greedy"] and got["seeded"] == whole["seeded"]
    assert capped.max_usage <= cap and got["peak_rss_bytes"] < cap
    assert got["greedy_cache"]["misses"] > 0 and got["greedy_cache"]["segment_parts"] > 0
    if control:  # the same model loaded whole under the same cap is killed: the cap binds
        assert run_capped(worker(model, *RUN, "--max-memory-gib", "1000"), cap, TIMEOUT_S).killed
    return got


def test_a_20b_width_model_under_half_its_weights(w20):
    _same_tokens_under_half(w20, control=True)


def test_a_120b_width_model_under_half_its_weights(w120):
    _same_tokens_under_half(w120, control=False)
