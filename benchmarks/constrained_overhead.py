"""Structured outputs' cost per decoded token at the full 201,088-token vocabulary (target: < 0.3 ms,
decode no more than 3% slower).

    python benchmarks/constrained_overhead.py [--tokens 120] [--rounds 3] [--preset tiny] [--workdir DIR]

1. Host: `HarmonyConstraint.fill_mask` + `feed` per token over natural harmony turns (reasoning, then a
   JSON answer; a strict tool call), by state; CPU time of this thread (the machine is shared).
2. Device: decoding on a synthetic checkpoint (`--preset`, full vocabulary), unconstrained vs
   constrained to a JSON schema with no reasoning (every step masked by the grammar: the worst case):
   the runtime's own `generate` both ways (`plain`, `generate+mask`: the product path, the mask built
   while the device runs the step's forward pass), and two hand-written loops for reference -- the mask
   computed during the forward pass (`overlapped`) and after it (`serial`). Rounds alternate; medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import mlx.core as mx
import numpy as np

from gptoss_metal.converters import convert, synth
from gptoss_metal.harmony_io import encoding
from gptoss_metal.harmony_io import token_masks as g
from gptoss_metal.harmony_io.constraint import HarmonyConstraint, OutputConstraint
from gptoss_metal.metal_runtime import load
from gptoss_metal.metal_runtime.generate import generate, prefill
from gptoss_metal.metal_runtime.sampling import apply_token_bitmask

from grammar_engines import MATH  # noqa: E402 (benchmarks/ is the script's folder)

ANSWER = MATH  # OpenAI's structured-outputs example
CHART = {"type": "object", "properties": {
    "data": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
    "chart_type": {"type": "string", "enum": ["line", "bar", "scatter"]}, "title": {"type": "string"}},
    "required": ["data", "chart_type"], "additionalProperties": False}
REASONING = "The user asks for the steps. Start from 8x + 7 = -23, subtract 7, then divide by 8. " * 6
STEPS = [{"explanation": f"Step {i}: subtract and divide, keeping the sign — ありがとう.", "output": f"x = {i}.75"}
         for i in range(12)]


def turns() -> list[tuple[str, OutputConstraint, str]]:
    import json

    answer = json.dumps({"steps": STEPS, "final_answer": "x = -3.75"})
    call = json.dumps({"data": [[i, i * 1.5, -i] for i in range(30)], "chart_type": "bar", "title": "Sales by month"})
    return [
        ("reasoning + JSON answer", OutputConstraint(answer_schema=ANSWER),
         f"<|channel|>analysis<|message|>{REASONING}<|end|><|start|>assistant<|channel|>final<|message|>{answer}<|return|>"),
        ("strict tool call", OutputConstraint(answer_schema=ANSWER, functions={"generate_chart": CHART}),
         f"<|channel|>analysis<|message|>{REASONING[:200]}<|end|><|start|>assistant<|channel|>commentary "
         f"to=functions.generate_chart <|constrain|>json<|message|>{call}<|call|>"),
    ]


def host_costs(rounds: int) -> None:
    enc = encoding()
    t0 = time.perf_counter()
    g.warm_up()
    print(f"engine tokenizer for o200k_harmony built in {time.perf_counter() - t0:.2f} s (once per process)")
    print("\n| turn | constraint built (first / cached) | tokens | per token: reasoning | header | JSON | all (p99) |")
    print("|---|---|---|---|---|---|---|")
    everything: list[float] = []
    for name, spec, text in turns():
        tokens = enc.encode(text, allowed_special="all")
        t0 = time.perf_counter()
        HarmonyConstraint(spec)
        first_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        HarmonyConstraint(spec)
        cached_ms = (time.perf_counter() - t0) * 1e3
        by_state: dict[str, list[float]] = {"text": [], "header": [], "json": [], "between": []}
        row = g.empty_mask()
        for _ in range(rounds):
            c = HarmonyConstraint(spec)
            for t in tokens:
                state = c.state
                t1 = time.thread_time()
                c.fill_mask(row)
                c.feed(t)
                by_state[state].append(time.thread_time() - t1)
        every = [x for xs in by_state.values() for x in xs]
        everything += every
        med = lambda xs: f"{statistics.median(xs) * 1e6:.0f} us" if xs else "-"  # noqa: E731
        print(f"| {name} | {first_ms:.1f} / {cached_ms:.2f} ms | {len(tokens)} | {med(by_state['text'])} | "
              f"{med(by_state['header'] + by_state['between'])} | {med(by_state['json'])} | "
              f"{med(every)} ({np.percentile(every, 99) * 1e6:.0f} us) |")
    print(f"all: median {statistics.median(everything) * 1e6:.0f} us, p99 {np.percentile(everything, 99) * 1e6:.0f} us, "
          f"max {max(everything) * 1e6:.0f} us per token (CPU time)")


# -- a decode loop with and without masks --------------------------------------------------------


def greedy(logits: mx.array) -> mx.array:
    return mx.argmax(logits, axis=-1).astype(mx.uint32)


class Renewing:
    """A constraint that starts a new turn when one ends, so every step of a long loop is masked."""

    def __init__(self, spec: OutputConstraint):
        self.spec, self.current = spec, HarmonyConstraint(spec)

    def next_mask(self):
        if self.current.done:
            self.current = HarmonyConstraint(self.spec)
        return self.current.next_mask()

    def feed(self, token: int) -> None:
        self.current.feed(token)


def decode(model, prompt: list[int], n: int, mode: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for n decode steps. mode: plain | generate+mask | overlapped | serial."""
    if mode in ("plain", "generate+mask"):  # the runtime's own loop (prefill included in neither figure)
        constraint = Renewing(OutputConstraint(answer_schema=ANSWER, max_reasoning_tokens=0)) \
            if mode == "generate+mask" else None
        cache = model.make_cache()
        prefill(model, prompt[:-1], cache)
        steps = generate(model, prompt[-1:], max_tokens=n + 1, temperature=0.0, cache=cache, speculate=False,
                         constraint=constraint)
        next(steps)  # the first token: prefill's tail, not a decode step
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in steps:
            pass
        return time.perf_counter() - t0, time.process_time() - c0
    cache = model.make_cache()
    prefill(model, prompt[:-1], cache)
    step = lambda tok: model(tok.reshape(1, 1), cache)[:, -1, :]  # noqa: E731
    spec = OutputConstraint(answer_schema=ANSWER, max_reasoning_tokens=0)
    constraint = HarmonyConstraint(spec)
    row = np.empty((1, g.MASK_WORDS), dtype=np.int32)
    logits = step(mx.array([prompt[-1]], dtype=mx.uint32))
    mx.async_eval(logits)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        if mode == "serial":
            mx.eval(logits)  # the device is idle while the host computes the mask
        if constraint.done:
            constraint = HarmonyConstraint(spec)
        constraint.fill_mask(row[0])  # overlapped: the device is still running this step's forward pass
        y = greedy(apply_token_bitmask(logits, row))
        logits = step(y)  # the next forward pass, queued behind this sampling
        mx.async_eval(logits)
        constraint.feed(y.item())
    return time.perf_counter() - t0, time.process_time() - c0


def device_costs(preset: str, n: int, rounds: int, workdir: Path) -> None:
    hf = workdir / f"{preset}-hf"
    runtime = workdir / f"{preset}-runtime"
    if not runtime.exists():
        synth(hf, preset=preset, fmt="hf", seed=3)
        convert(hf, runtime)
    model = load(runtime)
    prompt = encoding().encode("<|start|>user<|message|>Solve 8x + 7 = -23 as JSON.<|end|><|start|>assistant",
                               allowed_special="all")
    modes = ["plain", "generate+mask", "overlapped", "serial"]
    for mode in modes:  # warm-up
        decode(model, prompt, 4, mode)
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:  # rotate: no mode always runs first
            w, c = decode(model, prompt, n, mode)
            wall[mode].append(w / n)
            cpu[mode].append(c / n)
    plain, plain_cpu = statistics.median(wall["plain"]), statistics.median(cpu["plain"])
    print(f"\ndecode on this machine's MLX backend ({mx.default_device()}), preset {preset}, vocabulary "
          f"{model.args.vocab_size}, {n} tokens x {rounds} rounds, greedy:")
    print("\n| decode loop | wall ms per token | vs unconstrained | process CPU ms per token | vs unconstrained |")
    print("|---|---|---|---|---|")
    for mode in modes:
        t, c = statistics.median(wall[mode]), statistics.median(cpu[mode])
        print(f"| {mode} | {t * 1e3:.2f} | {t / plain - 1:+.1%} | {c * 1e3:.2f} | {c / plain_cpu - 1:+.1%} |")
    words = mx.array(np.full((1, g.MASK_WORDS), -1, dtype=np.int32))
    logits = mx.random.normal((1, model.args.vocab_size))
    mx.eval(words, logits)
    apply_s = timed(lambda: mx.eval(greedy(apply_token_bitmask(logits, words))), 50)
    plain_s = timed(lambda: mx.eval(greedy(logits)), 50)
    print(f"\napplying a mask on the device here: {(apply_s - plain_s) * 1e3:.3f} ms per token "
          f"(masked greedy {apply_s * 1e3:.3f} ms vs greedy {plain_s * 1e3:.3f} ms)")


def timed(fn: Callable[[], None], n: int) -> float:
    fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=120, help="decode steps per measured loop")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--preset", default="tiny", help="synthetic checkpoint for the decode loop (tiny, small, 20b)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep checkpoints here (default: a temporary folder)")
    ap.add_argument("--host-only", action="store_true")
    args = ap.parse_args()
    host_costs(args.rounds)
    if args.host_only:
        return
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        device_costs(args.preset, args.tokens, args.rounds, args.workdir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            device_costs(args.preset, args.tokens, args.rounds, Path(tmp))


if __name__ == "__main__":
    main()
