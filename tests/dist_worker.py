"""What the distributed tests run on every rank under `mlx.launch` (test_distributed.py).

    python dist_worker.py model  MODEL OUT DTYPES     logits and generations (DTYPES: float32,bfloat16;
                                                      a sampled generation too for the first dtype)
    python dist_worker.py memory MODEL OUT            bytes of experts held, resident memory after loading
    python dist_worker.py engine MODEL OUT            a scripted conversation through the Engine
    python dist_worker.py fail   MODEL OUT HOW:RANK:AFTER   a failure injected on RANK after AFTER tokens
    python dist_worker.py tool   -     OUT            a chat turn with a python tool call (scripted model)

Run without mlx.launch, a scenario is the one-process reference. Results land in OUT as JSON (and
.npz for logits), one file per rank. Every rank runs under the same RankWatchdog the CLI uses.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np

from gptoss_metal.assistant import Engine
from gptoss_metal.metal_runtime import GenerationStats, generate, load
from gptoss_metal.metal_runtime.distributed import (
    BroadcastSampler,
    DistributedGroup,
    gather_json,
    held_bytes,
    init_group,
    launched_backend,
    launched_rank,
    launched_size,
    load_expert_parallel,
    expert_slice_of,
)
from gptoss_metal.metal_runtime.rank_watchdog import RankWatchdog

# harmony-ish ids; the prompt repeats a span so prompt lookup finds drafts, and crosses tiny's window (8)
BASE = [200006, 17360, 200008, 3575, 553, 261, 10297, 1499, 29, 12, 2888, 3331, 7, 1002, 1234, 4321, 99, 5,
        777, 200007, 200006, 173781, 200005]
PROMPT = BASE + BASE[:14]
NEW = 10


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def load_model(model_dir: str, group: Optional[DistributedGroup], dtype: str):
    return load_expert_parallel(model_dir, group, dtype=dtype) if group else load(model_dir, dtype=dtype)


def logits_of(model, prompt: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(whole-prompt logits, each decode step's logits after a 20-token prefill), float32."""
    full = model(mx.array([prompt]))[0].astype(mx.float32)
    cache = model.make_cache()
    model(mx.array([prompt[:20]]), cache)
    steps = mx.stack([model(mx.array([[t]]), cache)[0, -1].astype(mx.float32) for t in prompt[20:]])
    mx.eval(full, steps)
    return np.array(full), np.array(steps)


def run_model(model_dir: str, out: Path, group: Optional[DistributedGroup], dtypes: list[str]) -> None:
    rank = group.rank if group else 0
    result = {}
    for i, dtype in enumerate(dtypes):
        model = load_model(model_dir, group, dtype)
        full, steps = logits_of(model, PROMPT)

        def sampler(temperature: float, seed: int = 0):
            return BroadcastSampler(group, temperature, 1.0, seed) if group else None

        greedy = list(generate(model, PROMPT, max_tokens=NEW, temperature=0.0, sampler=sampler(0.0)))
        sampled = list(generate(model, PROMPT, max_tokens=NEW, temperature=0.8, seed=5, sampler=sampler(0.8, 5))
                       ) if i == 0 else None
        result[dtype] = {"greedy": greedy, "sampled": sampled, "slice": list(expert_slice_of(model))}
        if rank == 0:
            np.savez(out / f"logits-{dtype}.npz", full=full, steps=steps)
        del model
    if group:  # every rank's tokens, to check they all ran the same stream
        result = {"ranks": gather_json(result, group)}
    (out / f"model-rank{rank}.json").write_text(json.dumps(result))


def run_memory(model_dir: str, out: Path, group: Optional[DistributedGroup]) -> None:
    rank = group.rank if group else 0
    before = rss_bytes()
    model = load_model(model_dir, group, "bfloat16")
    experts, dense = held_bytes(model)
    report = {"rss_delta": rss_bytes() - before, "expert_bytes": experts, "dense_bytes": dense,
              "slice": list(expert_slice_of(model))}
    (out / f"memory-rank{rank}.json").write_text(json.dumps(report))


SCRIPT = [  # (prompt, options): a conversation reusing its cache, a stop by the caller, sampling, speculation
    (BASE, {"max_tokens": 12, "temperature": 0.0}),
    (BASE + [200008, 40, 41, 42] + BASE[:6], {"max_tokens": 10, "temperature": 0.0}),
    (BASE + BASE, {"max_tokens": 14, "temperature": 0.0, "stop_after": 5}),
    (BASE + BASE + [50, 51], {"max_tokens": 12, "temperature": 0.9, "seed": 11}),
    (BASE[:10], {"max_tokens": 8, "temperature": 0.0, "speculate": False}),
]


def run_engine(model_dir: str, out: Path, group: Optional[DistributedGroup], guard: Optional[RankWatchdog]) -> None:
    rank = group.rank if group else 0
    engine = Engine.load(model_dir, dtype="float32", group=group, guard=guard)
    if group and not group.leader:
        engine.follow()
    else:
        outputs = []
        for prompt, opts in SCRIPT:
            opts = dict(opts)
            stop_after = opts.pop("stop_after", None)
            stats = GenerationStats()
            if stop_after:
                _stop_after(engine, prompt, stats, stop_after, **opts)
            else:
                for _ in engine.stream(prompt, stats=stats, **opts):
                    pass
            outputs.append({"tokens": list(stats.generated), "reused": stats.reused_tokens,
                            "prefilled": stats.prefilled_tokens})
        (out / "engine-outputs.json").write_text(json.dumps(outputs))
        engine.close()
    slot = engine.slots[0]
    (out / f"engine-rank{rank}.json").write_text(json.dumps({"tokens": slot.tokens, "offset": slot.cache.offset}))


def _stop_after(engine: Engine, prompt: list[int], stats: GenerationStats, n: int, **opts) -> None:
    """A generation its caller cancels right after its n-th token (decided on the decode thread, so the
    point is exact, as a client that hangs up between two tokens)."""
    import threading

    done, submitted = threading.Event(), threading.Event()
    handle = []

    def push(item) -> None:
        if len(stats.generated) >= n:
            submitted.wait()
            handle[0].cancel()
        if type(item).__name__ == "Finished":
            done.set()

    handle.append(engine.submit(prompt, push=push, stats=stats, **opts))
    submitted.set()
    assert done.wait(600)


def run_fail(model_dir: str, out: Path, group: DistributedGroup, guard: RankWatchdog, how: str) -> None:
    """Rank 0 runs requests with pauses (like a user); RANK fails after it has seen AFTER tokens."""
    mode, who, after = how.split(":")
    who, after = int(who), int(after)
    engine = Engine.load(model_dir, dtype="float32", group=group, guard=guard)
    seen = 0

    def token_seen() -> None:
        nonlocal seen
        seen += 1
        if group.rank != who or seen != after:
            return
        if mode == "raise":
            raise RuntimeError(f"injected failure on rank {group.rank}")
        if mode == "hang":
            time.sleep(10**6)
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "exit0":  # leaves without a word and with success: mlx.launch then stops nobody
            os._exit(0)

    print(f"rank {group.rank} ready", flush=True)
    if not group.leader:
        take = engine.core._take
        engine.core._take = lambda seq, *drawn: (token_seen(), take(seq, *drawn))[1]
        engine.follow()
        return
    for i in range(int(os.environ.get("DIST_REQUESTS", "3"))):
        time.sleep(float(os.environ.get("DIST_PAUSE", "1")))  # like a user: the group idles between requests
        for _ in engine.stream(BASE, max_tokens=12, temperature=0.0):
            token_seen()
        print(f"rank 0 finished request {i + 1}", flush=True)
    engine.close()


def run_tool(out: Path, group: DistributedGroup, guard: RankWatchdog) -> None:
    """A ChatSession on rank 0 whose model calls the python tool twice: the tool runs on rank 0 only, and
    every rank's engine runs the three generations of the turn (a scripted model: same logits everywhere)."""
    from doubles import ScriptedModel

    from gptoss_metal.assistant import ChatSession, ToolResult
    from gptoss_metal.metal_runtime.lockstep import Lockstep
    from gptoss_metal.harmony_io import encoding

    replies = ["<|channel|>analysis to=python code<|message|>x = 6 * 7\nx<|call|>",
               "<|channel|>analysis to=python code<|message|>x + 1<|call|>",
               "<|channel|>final<|message|>It is 43.<|return|>"]
    model = ScriptedModel([encoding().encode(r, allowed_special="all") for r in replies])
    engine = Engine(model, lockstep=Lockstep(group, guard))
    if group.leader:
        session = ChatSession(engine, python_tool=True, temperature=0.0, current_date="2026-11-23")
        results = [e.output.strip() for e in session.send("compute") if isinstance(e, ToolResult)]
        (out / "tool.json").write_text(json.dumps({"results": results, "answer": session.messages[-1]["content"],
                                                   "steps": len(session.last_turn.steps)}))
        session.close()
        engine.close()
    else:
        engine.follow()
    (out / f"tool-rank{group.rank}.json").write_text(json.dumps({"tokens": engine.slots[0].tokens}))


def main() -> None:
    scenario, model_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    if launched_backend() is None:
        if scenario == "model":
            run_model(model_dir, out, None, sys.argv[4].split(","))
        elif scenario == "memory":
            run_memory(model_dir, out, None)
        else:
            run_engine(model_dir, out, None, None)
        sys.stdout.flush()
        os._exit(0)  # MLX's threads at interpreter exit occasionally abort ("terminate called ...")
    guard = RankWatchdog(launched_rank(), launched_size())
    guard.install()

    def body() -> None:
        with guard.deadline("joining the group"):
            group = init_group()
        if scenario == "model":
            run_model(model_dir, out, group, sys.argv[4].split(","))
        elif scenario == "memory":
            run_memory(model_dir, out, group)
        elif scenario == "engine":
            run_engine(model_dir, out, group, guard)
        elif scenario == "tool":
            run_tool(out, group, guard)
        else:
            run_fail(model_dir, out, group, guard, sys.argv[4])

    guard.run(body)


if __name__ == "__main__":
    main()
