"""Host time per token through the Engine -- the decode thread, the harmony parser, the hand-off to the
caller -- with a model that costs nothing, against another version of gptoss-metal in the same run.

    python benchmarks/engine_overhead.py [--tokens 2000] [--rounds 5] [--against /path/to/other/checkout]

`--against` runs the same measurement with another checkout's package (e.g. `git worktree add
/tmp/old <commit>`), alternating, and prints the ratio of the minima (the least disturbed round: on a
shared machine the medians wander). Greedy, speculation off, vocabulary 1024 (the sampling cost,
which scales with the vocabulary and runs on the GPU on a Mac, is not what this measures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(tokens: int, rounds: int) -> list[list[float]]:
    """[wall seconds, CPU seconds of the process (every thread)] per token, one pair per round."""
    import mlx.core as mx

    sys.path.insert(0, str(HERE))
    from host_overhead import StubModel

    from gptoss_metal.assistant import Engine
    from gptoss_metal.harmony_io import encoding
    from gptoss_metal.metal_runtime.cache import ModelCache

    class CachedStub(StubModel):
        """The stub, with a one-layer cache that really advances (prompt caches check it)."""

        dtype = mx.float32

        def make_cache(self, trim_slack: int = 0) -> ModelCache:
            return ModelCache(["full_attention"], 128, trim_slack)

        def __call__(self, toks, cache=None):
            if cache is not None:
                kv = mx.zeros((toks.shape[0], 1, toks.shape[1], 1))
                for layer in cache.layers:
                    layer.update_and_fetch(kv, kv)
            out = super().__call__(toks, cache)
            return mx.broadcast_to(out[:, -1:, :], (toks.shape[0], toks.shape[1], out.shape[-1]))

    enc = encoding()
    body = [t for t in enc.encode("<|channel|>final<|message|>" + "The quick brown fox jumps over the lazy dog. " * 8,
                                  allowed_special="all") if t < 1024][:60]
    engine = Engine(CachedStub(1024, body), speculate=False)
    out = []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in engine.stream([1, 2, 3, 4], max_tokens=tokens, temperature=0.0):
            pass
        out.append([(time.perf_counter() - t0) / tokens, (time.process_time() - c0) / tokens])
    engine.close()
    return out


def run_other(checkout: Path, tokens: int, rounds: int) -> list[list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "gptoss_metal").symlink_to(checkout.resolve())
        env = dict(os.environ, PYTHONPATH=tmp)  # found before the installed (editable) package
        out = subprocess.run([sys.executable, __file__, "--tokens", str(tokens), "--rounds", str(rounds), "--json"],
                             env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--against", type=Path, default=None)
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.json:
        print(json.dumps(measure(a.tokens, a.rounds)))
        return
    ours: list[list[float]] = []
    theirs: list[list[float]] = []
    for _ in range(3):  # alternate: neither version always runs on a quieter machine
        ours += json.loads(subprocess.run([sys.executable, __file__, "--tokens", str(a.tokens), "--rounds",
                                           str(a.rounds), "--json"], capture_output=True, text=True,
                                          check=True).stdout.strip().splitlines()[-1])
        if a.against is not None:
            theirs += run_other(a.against, a.tokens, a.rounds)

    def line(name: str, runs: list[list[float]]) -> str:
        wall, cpu = sorted(r[0] for r in runs), sorted(r[1] for r in runs)
        return (f"{name}: wall {wall[0] * 1e3:.4f} ms per token (min of {len(runs)}; median {wall[len(runs) // 2] * 1e3:.4f}), "
                f"CPU {cpu[0] * 1e3:.4f} (median {cpu[len(runs) // 2] * 1e3:.4f})")

    print(line("this checkout", ours))
    if theirs:
        print(line(str(a.against), theirs))
        print(f"ratio (this / other): wall minima {min(r[0] for r in ours) / min(r[0] for r in theirs):.3f}, "
              f"CPU minima {min(r[1] for r in ours) / min(r[1] for r in theirs):.3f}")


if __name__ == "__main__":
    main()
