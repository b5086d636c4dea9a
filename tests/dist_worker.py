"""Programs the distributed tests run on every rank under `mlx.launch` (test_distributed.py).

    python dist_worker.py model MODEL OUT_DIR          logits, generations, resident bytes per rank
    python dist_worker.py engine MODEL OUT_DIR         a scripted conversation through the Engine
    python dist_worker.py fail MODEL OUT_DIR HOW:RANK:AFTER   a failure injected on RANK after AFTER tokens

Without mlx.launch each runs as one process: the reference the tests compare with. Results are JSON
(and .npz for logits) in OUT_DIR, one file per rank.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from gptoss_metal.architecture import is_expert_tensor
from gptoss_metal.assistant import Engine, TurnStats
from gptoss_metal.metal_runtime import generate, load
from gptoss_metal.metal_runtime.distributed import (
    BroadcastSampler,
    expert_slice_of,
    gather_json,
    init_group,
    load_expert_parallel,
)
from gptoss_metal.metal_runtime.guard import Guard

# 23 harmony-ish ids, repeated so prompt lookup finds drafts; crosses the tiny preset's window (8)
BASE = [200006, 17360, 200008, 3575, 553, 261, 10297, 1499, 29, 12, 2888, 3331, 7, 1002, 1234, 4321, 99, 5,
        777, 200007, 200006, 173781, 200005]
PROMPT = BASE + BASE[:14]
NEW = 16


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0


def resident(model) -> dict:
    params = dict(mx.utils.tree_flatten(model.parameters())) if hasattr(mx, "utils") else {}
    if not params:
        from mlx.utils import tree_flatten

        params = dict(tree_flatten(model.parameters()))
    experts = sum(v.nbytes for k, v in params.items() if is_expert_tensor(k))
    dense = sum(v.nbytes for k, v in params.items() if not is_expert_tensor(k))
    return {"expert_bytes": experts, "dense_bytes": dense, "slice": list(expert_slice_of(model))}


def logits_of(model, prompt: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(full-prompt logits, logits of each decode step after a chunked prefill), float32."""
    full = model(mx.array([prompt]))[0].astype(mx.float32)
    cache = model.make_cache()
    model(mx.array([prompt[:20]]), cache)
    steps = mx.stack([model(mx.array([[t]]), cache)[0, -1].astype(mx.float32) for t in prompt[20:]])
    mx.eval(full, steps)
    return np.array(full), np.array(steps)


def run_model(model_dir: str, out: Path, group) -> None:
    rank = group.rank if group else 0
    result: dict = {}
    for dtype in ("float32", "bfloat16"):
        before = rss_bytes()
        model = load_expert_parallel(model_dir, group, dtype=dtype) if group else load(model_dir, dtype=dtype)
        result[dtype] = {**resident(model), "rss_delta": rss_bytes() - before}
        full, steps = logits_of(model, PROMPT)
        sampler = (lambda t, s=None: BroadcastSampler(group, t, seed=s)) if group else None
        greedy = list(generate(model, PROMPT, max_tokens=NEW, temperature=0.0,
                               sampler=sampler(0.0) if group else None))
        sampled = list(generate(model, PROMPT, max_tokens=NEW, temperature=0.8, top_p=0.95, seed=5,
                                sampler=sampler(0.8, 5) if group else None))
        if group:
            sampler0 = BroadcastSampler(group, 0.8, 0.95, 5)  # noqa: F841 - keyed like the one above
        result[dtype].update(greedy=greedy, sampled=sampled)
        if rank == 0:
            np.savez(out / f"logits-{dtype}.npz", full=full, steps=steps)
        del model
    if group:
        result["all"] = gather_json({k: result[k] for k in ("float32", "bfloat16")}, group)
    (out / f"model-rank{rank}.json").write_text(json.dumps(result))


SCRIPT = [  # (prompt, options): a conversation that reuses its cache, a stop, sampling, speculation
    (BASE, {"max_tokens": 12, "temperature": 0.0}),
    (BASE + [200008, 40, 41, 42] + BASE[:6], {"max_tokens": 10, "temperature": 0.0}),
    (BASE + BASE, {"max_tokens": 14, "temperature": 0.0, "stop_after": 5}),
    (BASE + BASE + [50, 51], {"max_tokens": 12, "temperature": 0.9, "seed": 11}),
    (BASE[:10], {"max_tokens": 8, "temperature": 0.0, "speculate": False}),
]


def run_engine(model_dir: str, out: Path, group, guard) -> None:
    rank = group.rank if group else 0
    engine = Engine.load(model_dir, dtype="float32", group=group, guard=guard)
    if group and not group.leader:
        engine.follow()
    else:
        outputs = []
        for prompt, opts in SCRIPT:
            opts = dict(opts)
            stop_after = opts.pop("stop_after", None)
            stats = TurnStats()
            should_stop = (lambda st=stats, n=stop_after: len(st.generated) >= n) if stop_after else None
            for _ in engine.stream(prompt, stats=stats, should_stop=should_stop, **opts):
                pass
            outputs.append({"tokens": list(stats.generated), "reused": stats.reused_tokens,
                            "prefilled": stats.prefilled_tokens})
        (out / "engine-outputs.json").write_text(json.dumps(outputs))
        engine.close()
    slot = engine.slots[0]
    (out / f"engine-rank{rank}.json").write_text(json.dumps({"tokens": slot.tokens, "offset": slot.cache.offset}))


def run_fail(model_dir: str, out: Path, group, guard, how: str) -> None:
    """Rank 0 serves requests one after another (with pauses, like a user); RANK fails after AFTER tokens."""
    mode, who, after = how.split(":")
    who, after = int(who), int(after)
    engine = Engine.load(model_dir, dtype="float32", group=group, guard=guard)
    count = 0

    def inject() -> None:
        nonlocal count
        count += 1
        if group.rank != who or count != after:
            return
        if mode == "raise":
            raise RuntimeError(f"injected failure on rank {group.rank}")
        if mode == "hang":
            time.sleep(10**6)
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)

    print(f"rank {group.rank} ready", flush=True)
    if not group.leader:
        loop = engine._loop
        dispatch = loop._dispatch

        def counting(r, tok):
            inject()
            dispatch(r, tok)

        loop._dispatch = counting
        engine.follow()
        return
    for i in range(int(os.environ.get("DIST_REQUESTS", "3"))):
        time.sleep(float(os.environ.get("DIST_PAUSE", "1")))
        for _ in engine.stream(BASE, max_tokens=12, temperature=0.0):
            inject()
    engine.close()


def main() -> None:
    scenario, model_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    from gptoss_metal.metal_runtime.distributed import launched_backend

    if launched_backend() is None:
        {"model": lambda: run_model(model_dir, out, None),
         "engine": lambda: run_engine(model_dir, out, None, None)}[scenario]()
        return
    guard = Guard(int(os.environ["MLX_RANK"]), len(json.loads(Path(os.environ["MLX_HOSTFILE"]).read_text())))
    guard.install()

    def body() -> None:
        with guard.deadline("joining the group"):
            group = init_group()
        if scenario == "model":
            run_model(model_dir, out, group)
        elif scenario == "engine":
            run_engine(model_dir, out, group, guard)
        else:
            run_fail(model_dir, out, group, guard, sys.argv[4])

    guard.run(body)


if __name__ == "__main__":
    main()
