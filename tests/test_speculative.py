"""Speculative decoding by prompt lookup: drafts, exact rollback, identical greedy output, sampling."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from gptoss_metal.metal_runtime import GenerationStats, generate, load
from gptoss_metal.metal_runtime.cache import ModelCache, SlidingWindowCache
from gptoss_metal.metal_runtime.sampling import SamplerState
from gptoss_metal.metal_runtime.speculative import PromptLookupDrafter, SpeculationPolicy

WINDOW = 8  # tiny preset's sliding window


class Always(SpeculationPolicy):
    """Verify every draft in full (tests exactness without the cost model deciding)."""

    def draft_length(self, available: int) -> int:
        return available


@pytest.fixture(scope="module")
def model(tiny_runtime):
    return load(tiny_runtime, dtype="float32")


def test_drafter_proposes_what_followed_the_latest_longest_match():
    d = PromptLookupDrafter(max_ngram=3, min_ngram=2, max_draft=4)
    d.extend([1, 2, 3, 4, 1, 2, 3, 5, 7, 2, 3])
    assert d.draft() == [5, 7, 2, 3]  # "2 3": its latest earlier occurrence (index 5..6) wins
    d.extend([5])  # now the 3-gram "2 3 5" matches: the longest match is preferred
    assert d.draft() == [7, 2, 3, 5]
    assert d.draft(limit=2) == [7, 2]
    d2 = PromptLookupDrafter(min_ngram=2)
    d2.extend([5, 6, 7, 6])
    assert d2.draft() == []  # a single-token match is not enough


def _held(cache) -> list[dict[int, np.ndarray]]:
    """Per layer: position -> key vector of every position the layer would attend to next."""
    out = []
    for layer in cache.layers:
        keys = np.array(layer.keys[0, 0])
        if isinstance(layer, SlidingWindowCache):
            slots = layer._slot_positions(layer.offset)
            out.append({int(p): keys[i] for i, p in enumerate(slots) if p > layer.offset - 1 - layer.window})
        else:
            out.append({p: keys[p] for p in range(layer.offset)})
    return out


@pytest.mark.parametrize("history", [3, 4, 11, 33])  # before, at and past the ring's first wrap
@pytest.mark.parametrize("drop", [0, 1, 3, 5])
def test_settle_keeps_exactly_the_kept_positions(history, drop):
    rng = np.random.default_rng(history * 10 + drop)
    kv = [mx.array(rng.standard_normal((1, 1, 1, 2)).astype(np.float32)) for _ in range(history + 6)]
    a = ModelCache(["sliding_attention", "full_attention"], window=4)
    b = ModelCache(["sliding_attention", "full_attention"], window=4)
    for t in kv[:history]:
        for layer in a.layers:
            layer.update_and_fetch(t, t)
    with a.deferred_writes():
        new = mx.concatenate(kv[history:], axis=2)
        for layer in a.layers:
            layer.update_and_fetch(new, new)
    a.settle(drop)
    for t in kv[: history + 6 - drop]:  # the reference: only the kept positions, one at a time
        for layer in b.layers:
            layer.update_and_fetch(t, t)
    assert a.offset == b.offset == history + 6 - drop
    for la, lb in zip(_held(a), _held(b)):
        assert la.keys() == lb.keys()
        for p in la:
            np.testing.assert_array_equal(la[p], lb[p])


def test_deferred_forward_then_settle_continues_like_feeding_only_the_kept_tokens(model):
    seq = [200006, 17360, 200008] + list(range(1000, 1030))  # 33 positions: the rings wrapped 4 times
    draft = [5000, 6000, 7000, 8000, 9000]
    for drop in (0, 1, 3, 5):
        a = model.make_cache()
        model(mx.array([seq]), a)
        with a.deferred_writes():
            model(mx.array([[42] + draft]), a)
        a.settle(drop)
        b = model.make_cache()  # only the kept tokens, in one pass
        model(mx.array([seq + [42] + draft[: len(draft) - drop]]), b)
        assert a.offset == b.offset
        for t in ([123], [456], [789]):
            np.testing.assert_allclose(np.array(model(mx.array([t]), a)), np.array(model(mx.array([t]), b)),
                                       atol=2e-5, rtol=0)


class Oracle:
    """Drafts the true greedy continuation for a while, then wrong tokens: every accept/reject mix."""

    def __init__(self, truth: list[int], prompt_len: int, seed: int = 0):
        self.truth, self.tokens, self.rng = truth, [], np.random.default_rng(seed)
        self.prompt_len = prompt_len

    def extend(self, tokens):
        self.tokens += list(tokens)

    def draft(self, limit=None, after=()):
        done = len(self.tokens) + len(after) - self.prompt_len
        good = self.truth[done: done + int(self.rng.integers(0, (limit or 8) + 1))]
        return (good + [int(t) for t in self.rng.integers(1000, 2000, 3)])[: limit or 8]


def test_greedy_output_is_identical_with_and_without_speculation_past_the_window(model):
    prompt = [200006, 17360, 200008] + list(range(2000, 2012)) + [200007] * 2 + list(range(2000, 2012)) * 3
    assert len(prompt) > 4 * WINDOW
    plain = list(generate(model, prompt, max_tokens=48, temperature=0.0, speculate=False))
    for seed in range(3):
        stats = GenerationStats()
        spec = list(generate(model, prompt, max_tokens=48, temperature=0.0, speculate=Always(), stats=stats,
                             drafter=Oracle(plain, len(prompt), seed)))
        assert spec == plain
        assert stats.verifications >= 3 and stats.accepted_tokens > 10  # speculation really ran and paid
        assert stats.accepted_tokens < stats.drafted_tokens  # and rolled back what it got wrong
    # prompt lookup itself: same tokens whatever it drafts
    assert list(generate(model, prompt, max_tokens=48, temperature=0.0, speculate=Always())) == plain


def test_cache_after_a_speculative_generation_continues_exactly(model):
    prompt = list(range(3000, 3010)) * 4
    cache_a, cache_b = model.make_cache(), model.make_cache()
    b = list(generate(model, prompt, max_tokens=20, temperature=0.0, speculate=False, cache=cache_b))
    a = list(generate(model, prompt, max_tokens=20, temperature=0.0, speculate=Always(), cache=cache_a,
                      drafter=Oracle(b, len(prompt))))
    assert a == b
    more_a = list(generate(model, [a[-1]], max_tokens=10, temperature=0.0, cache=cache_a, speculate=False))
    more_b = list(generate(model, [b[-1]], max_tokens=10, temperature=0.0, cache=cache_b, speculate=False))
    assert more_a == more_b


def test_stop_inside_an_accepted_draft_ends_there(model):
    prompt = list(range(3000, 3010)) * 4
    free = list(generate(model, prompt, max_tokens=24, temperature=0.0, speculate=False))
    stop = free[9]
    stats = GenerationStats()
    out = list(generate(model, prompt, max_tokens=24, temperature=0.0, speculate=Always(), stop_ids=[stop],
                        stats=stats, drafter=Oracle(free, len(prompt), seed=4)))
    assert out == free[: free.index(stop) + 1] and stats.finish_reason == "stop"


def test_seeded_sampling_with_speculation_is_reproducible(model):
    prompt = list(range(3000, 3010)) * 4
    runs = [list(generate(model, prompt, max_tokens=24, seed=5, speculate=Always())) for _ in range(2)]
    assert runs[0] == runs[1]


def test_seeded_sampling_with_speculation_is_plain_sampling_token_for_token(model):
    """A sampled draft token is kept iff it is what plain sampling draws at its index (sampling.py): the
    output equals plain sampling's whatever is drafted, right or wrong."""
    prompt = list(range(3000, 3010)) * 4
    plain = list(generate(model, prompt, max_tokens=32, temperature=1.0, seed=5, speculate=False))
    for seed in range(3):
        stats = GenerationStats()
        spec = list(generate(model, prompt, max_tokens=32, temperature=1.0, seed=5, speculate=Always(), stats=stats,
                             drafter=Oracle(plain, len(prompt), seed)))
        assert spec == plain
        assert stats.accepted_tokens > 5 and stats.accepted_tokens < stats.drafted_tokens


def test_verification_targets_are_the_plain_draws_at_their_indices():
    logits = mx.array(np.random.default_rng(0).normal(size=(5, 50)).astype(np.float32))
    s = SamplerState(temperature=1.0, top_p=0.9, seed=77)
    rows = s.targets(logits, 10).tolist()
    assert rows == [int(s(logits[i : i + 1], 10 + i)[0]) for i in range(5)]
    assert len(set(int(s(logits[:1], n)[0]) for n in range(40))) > 1  # each index draws afresh


def test_policy_stops_speculating_when_drafts_fail_and_goes_on_when_they_pay():
    bad = SpeculationPolicy(probe_every=1000)
    bad.observe_plain(0.01)
    for _ in range(10):
        bad.observe_verify(0.018, drafted=4, accepted=0)
    assert bad.draft_length(8) == 0
    good = SpeculationPolicy()
    good.observe_plain(0.01)
    for _ in range(10):
        good.observe_verify(0.012, drafted=8, accepted=8)
    assert good.draft_length(8) == 8
