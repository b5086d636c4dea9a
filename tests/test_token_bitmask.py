"""metal_runtime.sampling.apply_token_bitmask: the packed allowed-token masks applied to logits on the device."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss_metal.metal_runtime.errors import GenerationError
from gptoss_metal.metal_runtime.sampling import apply_token_bitmask


def reference(logits: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Token t allowed iff bit t % 32 of word t // 32 is set (little-endian bit order within a word)."""
    vocab = logits.shape[-1]
    bits = np.unpackbits(words.astype("<i4").view(np.uint8), axis=-1, bitorder="little")[..., :vocab].astype(bool)
    return np.where(bits, logits, -np.inf)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 200), st.integers(0, 2**32 - 1))
def test_matches_the_bit_layout(batch, vocab, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((batch, vocab)).astype(np.float32)
    words = rng.integers(-2**31, 2**31, size=(batch, (vocab + 31) // 32), dtype=np.int64).astype(np.int32)
    words[0, 0] = -1  # every bit, the sign bit included
    got = np.array(apply_token_bitmask(mx.array(logits), words))
    np.testing.assert_array_equal(got, reference(logits, words))


def test_single_tokens_at_word_edges_and_all_ones():
    vocab = 97
    logits = mx.arange(vocab, dtype=mx.float32)
    for t in (0, 31, 32, 63, 64, 96):
        words = np.zeros(4, dtype=np.int32)
        words[t >> 5] = np.array(1 << (t & 31), dtype=np.uint32).view(np.int32)
        out = np.array(apply_token_bitmask(logits, words))
        assert np.flatnonzero(np.isfinite(out)).tolist() == [t]
        assert out[t] == t
    out = np.array(apply_token_bitmask(logits, np.full(4, -1, dtype=np.int32)))
    np.testing.assert_array_equal(out, np.arange(vocab, dtype=np.float32))


def test_keeps_dtype_and_refuses_a_short_mask():
    logits = mx.zeros((2, 64), dtype=mx.bfloat16)
    assert apply_token_bitmask(logits, np.full((2, 2), -1, dtype=np.int32)).dtype == mx.bfloat16
    with pytest.raises(GenerationError, match="cannot cover"):
        apply_token_bitmask(logits, np.full((2, 1), -1, dtype=np.int32))
