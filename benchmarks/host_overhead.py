"""Host overhead per decoded token, model compute excluded (target: <= 0.3 ms).

    python benchmarks/host_overhead.py [--tokens 2000]

A stub model returns precomputed logits instantly, so what is timed is everything around the
model: building the step graph, the pipelined async_eval/item hand-off, sampling, the stop check,
the harmony stream parser, the OpenAI delta mapping and the engine's bookkeeping. Two vocab sizes
separate host work from the device-side sampling cost (which scales with the vocabulary and runs
on the GPU on a Mac, but on the CPU here).
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import mlx.core as mx

from gptoss_metal.harmony_io import ChatStreamMapper, StreamParser, encoding
from gptoss_metal.metal_runtime import generate, make_sampler
from gptoss_metal.metal_runtime.cache import ModelCache


class StubModel:
    """Emits a fixed cycle of real harmony text tokens; costs nothing on the device."""

    def __init__(self, vocab: int, tokens: list[int]):
        self.args = SimpleNamespace(vocab_size=vocab, max_position_embeddings=1 << 30, sliding_window=128)
        self.rows = [mx.where(mx.arange(vocab) == t, 0.0, -1e9).astype(mx.float32)[None, None, :] for t in tokens]
        mx.eval(self.rows)
        self.i = 0

    def make_cache(self, trim_slack: int = 0) -> ModelCache:
        return ModelCache([], 128)

    def __call__(self, tokens, cache=None):
        row = self.rows[self.i % len(self.rows)]
        self.i += 1
        return row


def run(vocab: int, n: int, temperature: float) -> float:
    enc = encoding()
    text = enc.encode("<|channel|>final<|message|>", allowed_special="all")
    body = [t for t in enc.encode("The quick brown fox jumps over the lazy dog. " * 4) if t < vocab] or [1, 2, 3]
    model = StubModel(vocab, body)
    parser, mapper = StreamParser(), ChatStreamMapper()
    for t in text:
        parser.feed(t)
    sampler = make_sampler(temperature=temperature, seed=0)
    t0 = time.perf_counter()
    count = 0
    for tok in generate(model, [1, 2, 3], max_tokens=n, sampler=sampler):
        for ev in parser.feed(tok):
            mapper(ev)
        count += 1
    return (time.perf_counter() - t0) / count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    rows = [("host only (vocab 1024, greedy)", 1024, 0.0), ("host only (vocab 1024, sampled)", 1024, 1.0),
            ("full vocab 201088, greedy", 201088, 0.0), ("full vocab 201088, sampled T=1", 201088, 1.0)]
    for label, vocab, temp in rows:
        run(vocab, 50, temp)
        per = statistics.median(run(vocab, a.tokens, temp) for _ in range(a.repeats))
        print(f"{label:34s} {per * 1e3:7.3f} ms/token")


if __name__ == "__main__":
    main()
