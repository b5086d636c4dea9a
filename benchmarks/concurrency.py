"""Concurrent requests decoded together: aggregate throughput and time to first token, vs one stream.

    python benchmarks/concurrency.py                    # small preset, the default backend
    python benchmarks/concurrency.py --preset 20b --layers 24 --streams 1,4,8    # a GPU

One engine (max_sequences = the largest stream count) serves N concurrent greedy streams, each its own
prompt and conversation, decoding --gen-tokens tokens; the aggregate tok/s (all tokens / wall time of
the decode phase) is compared with one stream alone. Then a new request arrives while N-1 others are
decoding: its time to first token is compared with the same request on an idle engine. Also checked:
each stream's tokens equal its tokens when it runs alone (float32; see the note printed for bf16).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).parent))
from depth_compare import backend, ensure_checkpoint  # noqa: E402

from gptoss_metal.assistant import Engine  # noqa: E402
from gptoss_metal.harmony_io import STOP_IDS  # noqa: E402
from gptoss_metal.metal_runtime import GenerationStats, load  # noqa: E402
from gptoss_metal.metal_runtime.sequence import SequenceSpec  # noqa: E402


def prompts(n: int, length: int) -> list[list[int]]:
    return [[200006, 17360, 200008] + [1000 + 97 * i + j for j in range(length)] + [200007, 200006, 173781]
            for i in range(n)]


def stream(engine: Engine, prompt: list[int], gen: int, out: dict, key, marks: dict) -> None:
    """One greedy stream. `marks[key]`: (time, tokens so far) at each token, taken on the decode thread
    (a token sink on the serving core), so the benchmark knows exactly when each stream was decoding."""
    st = GenerationStats()
    series: list[tuple[float, int]] = [(time.perf_counter(), 0)]
    done = threading.Event()

    class Sink:
        def token(self, token: int, logprob=None) -> None:
            series.append((time.perf_counter(), len(st.generated)))

        def end(self, stats: GenerationStats, error) -> None:
            done.set()

    spec = SequenceSpec(prompt=tuple(prompt), max_tokens=gen, temperature=0.0, stop_ids=tuple(STOP_IDS),
                        speculate=False)
    engine.core.submit(spec, Sink(), st)
    done.wait()
    marks[key] = series
    out[key] = (list(st.generated), st)


def run_streams(engine: Engine, ps: list[list[int]], gen: int) -> tuple[float, dict]:
    """Aggregate decode tok/s while every stream is decoding: from the moment the last one has its
    first token to the moment the first one finishes (prefills and stragglers excluded)."""
    out: dict = {}
    marks: dict = {}
    threads = [threading.Thread(target=stream, args=(engine, p, gen, out, i, marks)) for i, p in enumerate(ps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start = max(next(t for t, n in marks[i] if n >= 1) for i in range(len(ps)))
    end = min(next(t for t, n in marks[i] if n >= gen) for i in range(len(ps)))

    def count_at(series: list[tuple[float, int]], when: float) -> int:
        return max((n for t, n in series if t <= when), default=0)

    produced = sum(count_at(marks[i], end) - count_at(marks[i], start) for i in range(len(ps)))
    return produced / (end - start), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "20b"])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--streams", default="1,2,4")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default="benchmarks/.work")
    a = ap.parse_args()
    counts = [int(n) for n in a.streams.split(",")]
    path = ensure_checkpoint(Path(a.workdir), a.layers, 201088, a.preset)
    model = load(path, dtype=a.dtype)
    engine = Engine(model, max_sequences=max(counts))
    ps = prompts(max(counts), a.prompt_tokens)
    run_streams(engine, ps[:1], 4)  # warm-up
    rates: dict[int, list[float]] = {n: [] for n in counts}
    outs: dict[int, dict] = {}
    for _ in range(a.rounds):
        for n in counts:
            rate, out = run_streams(engine, ps[:n], a.gen_tokens)
            rates[n].append(rate)
            outs[n] = out
    alone = {i: run_streams(engine, [ps[i]], a.gen_tokens)[1][0][0] for i in range(max(counts))}
    identical = all(outs[n][i][0] == alone[i] for n in counts for i in range(n))
    # time to first token of a newcomer while others decode, vs on an idle engine
    idle_ttft: list[float] = []
    busy_ttft: list[float] = []
    newcomer = prompts(max(counts) + 1, a.prompt_tokens)[-1]
    for _ in range(a.rounds):
        marks: dict = {}
        t0 = time.perf_counter()
        stream(engine, newcomer, 2, {}, "idle", marks)
        idle_ttft.append(next(t for t, n in marks["idle"] if n >= 1) - t0)
        others = [threading.Thread(target=stream, args=(engine, p, 4 * a.gen_tokens, {}, i, {}))
                  for i, p in enumerate(ps[: max(counts) - 1])]
        for t in others:
            t.start()
        time.sleep(1.0)
        t0 = time.perf_counter()
        stream(engine, newcomer, 2, {}, "busy", marks)
        busy_ttft.append(next(t for t, n in marks["busy"] if n >= 1) - t0)
        for t in others:
            t.join()
    engine.close()
    base = statistics.median(rates[counts[0]])
    print(f"\n### concurrent streams: {a.preset} width, {a.layers} layers, {a.dtype}, {a.gen_tokens} tokens per "
          f"stream, {a.rounds} rounds (medians)\n")
    print(f"Machine: {platform.system()} {platform.machine()}; MLX {mx.__version__} ({backend()}).\n")
    print("| streams | aggregate decode tok/s | vs one stream |")
    print("|---|---|---|")
    for n in counts:
        r = statistics.median(rates[n])
        print(f"| {n} | {r:.2f} | {r / base:.2f}x |")
    print(f"\nTime to first token of a new {a.prompt_tokens + 6}-token request: idle engine "
          f"{statistics.median(idle_ttft):.2f} s, while {max(counts) - 1} others decode "
          f"{statistics.median(busy_ttft):.2f} s.")
    print(f"Each stream's tokens equal its tokens alone: {identical} ({a.dtype}).")


if __name__ == "__main__":
    main()
