"""Choices the host takes part in: allowed-token masks (structured outputs) and logprobs, in the runtime.

Both run alone (the single-sequence loop) and beside other sequences (the batched step); either way a
masked sequence draws only allowed tokens, its constraint is told every token exactly once, and each
logprob equals a recomputation from the model's logits (float32, an independent forward pass).
"""

from __future__ import annotations

import threading

import mlx.core as mx
import numpy as np
import pytest

from gptoss_metal.harmony_io import STOP_IDS
from gptoss_metal.metal_runtime import GenerationStats, load
from gptoss_metal.metal_runtime.sequence import SequenceSpec
from gptoss_metal.metal_runtime.serving import ServingCore

PROMPT = (200006, 17360, 200008, 3575, 553, 261, 10297, 1499, 29, 12, 200007, 200006, 173781)
OTHER = (200006, 17360, 200008, 4000, 4001, 4002, 200007, 200006, 173781)
WAIT_S = 120


@pytest.fixture(scope="module")
def model(tiny_runtime):
    return load(tiny_runtime, dtype="float32")


class Only:
    """A constraint allowing a fixed set of token ids, recording every token it is fed."""

    def __init__(self, allowed: list[int], vocab: int):
        words = np.zeros((vocab + 31) // 32, dtype=np.uint32)
        for t in allowed:  # bit t % 32 of word t // 32
            words[t // 32] |= np.uint32(1 << (t % 32))
        self.mask = words.view(np.int32)
        self.allowed, self.fed = set(allowed), []

    def next_mask(self):
        return self.mask

    def feed(self, token: int) -> None:
        assert token in self.allowed, token
        self.fed.append(token)


def run(core: ServingCore, specs: list[tuple[SequenceSpec, object]]) -> list[tuple[GenerationStats, list]]:
    out, done = [], []
    for spec, constraint in specs:
        stats, ended, lps = GenerationStats(), threading.Event(), []

        class Sink:
            def token(self, token, logprob, lps=lps):
                lps.append(logprob)

            def end(self, st, error, ended=ended):
                assert error is None, error
                ended.set()

        core.submit(spec, Sink(), stats, constraint)
        out.append((stats, lps))
        done.append(ended)
    for d in done:
        assert d.wait(WAIT_S)
    return out


def recomputed_logprobs(model, prompt, generated) -> np.ndarray:
    """log_softmax of the logits after each position of prompt + generated (float64), one forward pass."""
    logits = model(mx.array([list(prompt) + list(generated)]))[0].astype(mx.float32)
    x = np.array(logits, dtype=np.float64)[len(prompt) - 1:]
    return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)


@pytest.mark.parametrize("beside", [0, 1], ids=["alone", "batched"])
def test_a_mask_is_obeyed_and_its_constraint_told_every_token_once(model, beside):
    allowed = [1000 + 7 * i for i in range(40)] + list(STOP_IDS)
    only = Only(allowed, model.args.vocab_size)
    core = ServingCore(model, max_sequences=2)
    specs = [(SequenceSpec(PROMPT, 24, temperature=1.0, seed=3, stop_ids=STOP_IDS), only)]
    specs += [(SequenceSpec(OTHER, 30, temperature=0.0, stop_ids=STOP_IDS), None)] * beside
    (stats, _), *others = run(core, specs)
    core.close()
    assert stats.generated and set(stats.generated) <= set(allowed)
    assert only.fed == stats.generated  # each token once, in order, whichever loop drew it
    if others:  # the unconstrained neighbour drew freely (greedy: what it draws alone)
        alone = ServingCore(model)
        ((free, _),) = run(alone, [(SequenceSpec(OTHER, 30, temperature=0.0, stop_ids=STOP_IDS), None)])
        alone.close()
        assert others[0][0].generated == free.generated


@pytest.mark.parametrize("beside", [0, 1], ids=["alone", "batched"])
def test_logprobs_equal_a_recomputation_from_the_logits(model, beside):
    core = ServingCore(model, max_sequences=2)
    specs = [(SequenceSpec(PROMPT, 12, temperature=1.0, seed=5, stop_ids=(), logprobs=4), None)]
    specs += [(SequenceSpec(OTHER, 16, temperature=0.0, stop_ids=()), None)] * beside
    (stats, lps), *_ = run(core, specs)
    core.close()
    assert len(lps) == len(stats.generated) == 12
    want = recomputed_logprobs(model, PROMPT, stats.generated)
    for i, (tok, lp) in enumerate(zip(stats.generated, lps)):
        assert lp.token == tok and abs(lp.logprob - want[i, tok]) <= 1e-4
        top = np.argsort(-want[i])[:4]
        assert [t for t, _ in lp.top] == top.tolist()
        assert np.allclose([v for _, v in lp.top], want[i, top], atol=1e-4)


def test_masks_and_logprobs_do_not_change_what_is_drawn(model):
    """With a mask allowing everything and logprobs on, a seeded generation draws what it draws without."""
    everything = Only(list(range(model.args.vocab_size)), model.args.vocab_size)
    core = ServingCore(model)
    spec = SequenceSpec(PROMPT, 16, temperature=1.0, seed=9, stop_ids=STOP_IDS)
    ((plain, _),) = run(core, [(spec, None)])
    ((checked, lps),) = run(core, [(SequenceSpec(PROMPT, 16, temperature=1.0, seed=9, stop_ids=STOP_IDS,
                                                 logprobs=0), everything)])
    core.close()
    assert checked.generated == plain.generated and all(lp is not None and lp.top == () for lp in lps)
