"""A model bigger than its memory budget: experts in a bounded cache, the embedding read on demand.

The judge is the same model held whole: logits bit for bit and tokens (greedy and seeded) on every
expert path, with caches small enough that prefill runs in parts and decode misses, under every
policy, with and without reading ahead, and for sequences decoded together.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import mlx.core as mx
import mlx.nn as nn

from gptoss_metal.architecture import StoredTensor, TensorSpec
from gptoss_metal.converters import PRESETS, convert
from gptoss_metal.converters.layouts import FLOAT, expected_runtime
from gptoss_metal.metal_runtime import ModelLoadError, generate, load
from gptoss_metal.metal_runtime.embedding_rows import OnDemandEmbedding
from gptoss_metal.metal_runtime.expert_cache import LFU, LRU, POLICIES, CacheSettings, Pinned
from gptoss_metal.metal_runtime.expert_paths import PATH_NAMES
from gptoss_metal.metal_runtime.memory import GIB, MemoryPlan, plan_memory

PROMPT = np.random.default_rng(0).integers(0, 199_990, 40).tolist()
SMALL = CacheSettings(slots=4, segment=3, policy="lru", prefetch=True)  # tiny: 8 experts, top-4; prefill in parts of 3


def _np(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


def _stored(preset: str) -> dict[str, StoredTensor]:
    """A runtime folder's tensors as its header would list them (bf16 floats), without writing it."""
    arch = PRESETS[preset]
    specs = [TensorSpec(e.name, "BF16" if e.dtype == FLOAT else e.dtype, e.shape) for e in expected_runtime(arch, {})]
    return {s.name: StoredTensor(s, None, 0) for s in specs}


@pytest.mark.parametrize("path", [p for p in PATH_NAMES])
def test_every_expert_path_gives_the_whole_models_logits_and_tokens(tiny_runtime, path):
    whole = load(tiny_runtime, dtype="float32", experts=path)
    cached = load(tiny_runtime, dtype="float32", experts=path, expert_cache=SMALL)
    assert cached.expert_cache is not None and whole.expert_cache is None
    np.testing.assert_array_equal(_np(cached(mx.array([PROMPT]))), _np(whole(mx.array([PROMPT]))))
    for options in ({"temperature": 0.0}, {"temperature": 1.0, "seed": 5}):
        want = list(generate(whole, PROMPT, max_tokens=10, **options))
        assert list(generate(cached, PROMPT, max_tokens=10, **options)) == want
    s = cached.expert_cache.stats
    # the cache really was too small: prefill came in parts, decode missed and read from disk
    assert s.segment_parts > s.segment_calls > 0 and s.misses > 0 and s.decode_bytes > 0 and s.embedding_bytes > 0


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("prefetch", [False, True])
def test_every_policy_with_and_without_reading_ahead_gives_the_same_tokens(tiny_runtime, policy, prefetch):
    whole = load(tiny_runtime, dtype="bfloat16", experts="mlx")
    cached = load(tiny_runtime, dtype="bfloat16", experts="mlx",
                  expert_cache=CacheSettings(slots=5, segment=8, policy=policy, prefetch=prefetch))
    want = list(generate(whole, PROMPT, max_tokens=12, temperature=1.0, seed=1))
    assert list(generate(cached, PROMPT, max_tokens=12, temperature=1.0, seed=1)) == want
    s = cached.expert_cache.stats
    assert (s.prefetched > 0) == prefetch
    if not prefetch:  # every byte read for decode is a miss's expert
        assert s.decode_bytes == s.misses * cached.expert_cache.expert_bytes


def test_sequences_decoded_together_whose_experts_do_not_fit_the_slots(tiny_runtime):
    """Two sequences in one forward pass route to more experts than a layer's 4 slots: the step runs
    in parts, and each sequence still gets the whole model's logits."""
    whole = load(tiny_runtime, dtype="float32", experts="auto")
    cached = load(tiny_runtime, dtype="float32", experts="auto", expert_cache=SMALL)
    prompts = [PROMPT[:9], PROMPT[20:33]]

    def run(model):
        caches = [model.make_cache() for _ in prompts]
        for c, p in zip(caches, prompts):
            model(mx.array([p]), c)
        tokens, out = [[p[-1]] for p in prompts], []
        for _ in range(6):
            logits = model(mx.array([[t[-1]] for t in tokens]), caches)[:, -1, :]
            out.append(_np(logits))
            for t, nxt in zip(tokens, np.argmax(out[-1], axis=-1).tolist()):
                t.append(nxt)
        return np.stack(out)

    want = run(whole)
    before = cached.expert_cache.stats.segment_calls
    np.testing.assert_array_equal(run(cached), want)
    assert cached.expert_cache.stats.segment_calls > before + len(prompts) * cached.args.num_hidden_layers


def test_the_budget_decides(tiny_runtime):
    from gptoss_metal.architecture import collect_tensors

    whole = load(tiny_runtime, dtype="float32", experts="mlx")
    plan = plan_memory(whole.args, collect_tensors(tiny_runtime), 4, 2**40)
    assert plan.fits and load(tiny_runtime, dtype="float32", max_memory=plan.whole).expert_cache is None
    smallest = load(tiny_runtime, dtype="float32", experts="mlx", max_memory=plan.minimum)
    assert smallest.expert_cache.settings.slots == whole.args.num_experts_per_tok
    want = list(generate(whole, PROMPT, max_tokens=8, temperature=0.0))
    assert list(generate(smallest, PROMPT, max_tokens=8, temperature=0.0)) == want
    with pytest.raises(ModelLoadError, match="Raise --max-memory"):
        load(tiny_runtime, dtype="float32", max_memory=plan.minimum - 1)


def test_the_plan_for_gpt_oss_20b_on_a_16_gb_mac():
    """20b in bf16 (13.8 GB whole) in the ~10.7 GiB macOS lets the GPU of a 16 GB Mac wire, less KV and
    the runtime reserve: dense weights resident, the embedding table on disk, most experts cached."""
    stored = _stored("20b")
    plan = plan_memory(PRESETS["20b"], stored, 2, int(9.5 * GIB))
    assert not plan.fits and 12.5e9 < plan.whole < 14e9
    assert plan.embedding > 1.1e9 and plan.dense < 2.5e9  # the embedding no longer counts against the budget
    assert 4 <= plan.slots < 32 and plan.resident <= plan.budget
    assert plan.budget - plan.resident < (plan.layers + 1) * plan.expert_bytes  # the room is used
    assert plan.expected_disk_bytes_per_token() == int(24 * 4 * (1 - plan.slots / 32) * plan.expert_bytes)
    fits = plan_memory(PRESETS["20b"], stored, 2, 15 * GIB)
    assert fits.fits and fits.resident == fits.whole and fits.expected_disk_bytes_per_token() == 0
    assert isinstance(fits, MemoryPlan)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_embedding_rows_read_on_demand_are_the_tables(tiny_runtime, tmp_path, dtype):
    from gptoss_metal.architecture import collect_tensors

    tokens = mx.array([[5, 199_998, 5, 77], [77, 3, 200_000, 5]])
    for folder, quantized in ((tiny_runtime, False), (convert(tiny_runtime, tmp_path / "q8", quantize_dense="q8")
                                                      .destination, True)):
        whole = load(folder, dtype=dtype, experts="mlx")
        stored = collect_tensors(folder)
        parts = {n: stored[f"model.embed_tokens.{n}"] for n in ("weight", "scales", "biases")
                 if f"model.embed_tokens.{n}" in stored}
        embed = whole.model.embed_tokens
        assert isinstance(embed, nn.QuantizedEmbedding) == quantized
        q = {"group_size": embed.group_size, "bits": embed.bits, "mode": embed.mode} if quantized else None
        read = []
        rows = OnDemandEmbedding(parts, whole.dtype, q, max_rows=3, on_read=read.append)
        np.testing.assert_array_equal(_np(rows(tokens)), _np(embed(tokens)))
        assert len(rows.rows) == 3  # bounded: the least recently used rows were dropped
        np.testing.assert_array_equal(_np(rows(tokens[:, :2])), _np(embed(tokens[:, :2])))
        assert sum(read) > 0


def test_the_slots_are_written_in_place(tiny_runtime):
    """Misses are read straight into the memory the model computes from (no copy, no new buffers)."""
    cached = load(tiny_runtime, dtype="float32", experts="mlx", expert_cache=SMALL)
    pool = cached.expert_cache.pools[0]
    weight = pool.rows.arrays["gate_proj.weight"]
    list(generate(cached, PROMPT, max_tokens=4, temperature=0.0))
    assert pool.rows.arrays["gate_proj.weight"] is weight
    from gptoss_metal.architecture import collect_tensors
    from gptoss_metal.metal_runtime.tensor_rows import read_rows

    t = collect_tensors(tiny_runtime)["model.layers.0.mlp.experts.gate_proj.weight"]
    for slot, expert in enumerate(pool.expert_of.tolist()):
        if expert >= 0:
            np.testing.assert_array_equal(np.array(weight[slot]), np.array(read_rows(t, expert, expert + 1)[0]))


def test_policies_choose_their_victims():
    lru, lfu, pinned = LRU(1), LFU(1), Pinned(1, pinned=1)
    for policy in (lru, lfu, pinned):
        for used in ([0, 1], [0], [2], [0], [3]):
            policy.used(0, np.array(used))
    # uses: 0 x3, 1/2/3 x1; last use: 1 oldest, then 2, 0, 3
    assert lru.victims(0, [0, 1, 2, 3], 2, keep=set()) == [1, 2]
    assert lru.victims(0, [0, 1, 2, 3], 1, keep={1}) == [2]
    assert lfu.victims(0, [0, 1, 2, 3], 3, keep=set()) == [1, 2, 3]
    assert pinned.victims(0, [0, 1, 2, 3], 4, keep=set())[:3] == [1, 2, 3]  # 0 is pinned: the last resort


# -- the commands ------------------------------------------------------------------------------


def _gptoss(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptoss_metal.cli.main", *args], capture_output=True, text=True,
                          env=dict(os.environ, COLUMNS="4000"), timeout=600)


def test_max_memory_on_the_commands(tiny_runtime):
    """`--max-memory` just above what a cache needs: generate answers the same, bench reports the cache's
    hit rate and disk bytes, doctor says the model does not fit and what the flag does."""
    from gptoss_metal.metal_runtime.loading import memory_plan

    gib = f"{math.ceil(memory_plan(tiny_runtime, 'bfloat16', 1 << 40).minimum / GIB * 1e9) / 1e9:.9f}"  # k slots
    ask = ("generate", str(tiny_runtime), "-p", "Say hi", "--effort", "low", "--temperature", "0", "--max-tokens", "12")
    whole, cached = _gptoss(*ask), _gptoss(*ask, "--max-memory", gib)
    assert whole.returncode == 0 and cached.returncode == 0, cached.stderr
    assert cached.stdout == whole.stdout
    bench = _gptoss("bench", str(tiny_runtime), "--prompt-tokens", "24", "--gen-tokens", "4", "--json", "--max-memory", gib)
    report = json.loads(bench.stdout)["expert_cache"]
    assert report["slots"] == 4 and 0 <= report["hit_rate"] <= 1 and report["disk_bytes_per_token"] > 0
    doctor = json.loads(_gptoss("doctor", str(tiny_runtime), "--json", "--max-memory", gib).stdout)
    plan = doctor["model"]["memory"]
    assert plan["fits"] is False and plan["slots"] == 4 and plan["disk_bytes_per_token"] > 0
    assert json.loads(_gptoss("doctor", str(tiny_runtime), "--json").stdout)["model"]["memory"]["fits"] is True
    too_little = _gptoss("generate", str(tiny_runtime), "-p", "hi", "--max-memory", "0.001")
    assert too_little.returncode == 1 and "Traceback" not in too_little.stderr and "--max-memory" in too_little.stderr
