"""Bigger than memory: decode under memory caps, expert-cache hit rates, disk bytes per token, Mac projections.

    python benchmarks/bigger_than_memory.py [--layers 8] [--vocab 201088] [--caps 100,75,50] [--gen-tokens 16]

1. Writes a gpt-oss-20b-width checkpoint (hidden 2880, 32 experts, 64 heads; `--layers` layers) with our
   synthetic writer and converts it (kept in benchmarks/.work/ for the next run).
2. Measures this machine's read bandwidth for expert-sized reads, three ways: `pread` into a buffer
   with the file's pages dropped first (what the cache does), `pread` from the page cache, and copying
   from an `mmap` of the dropped file.
3. Runs the model alone (no cap: the reference tokens and decode speed; once more recording its
   routing), then alone in a memory cgroup capped at each share of the weights (tests/memory_cap.py;
   the default budget: what the cgroup leaves), `--rounds` times interleaved, and reports the median
   decode tok/s, the cache's hit rate and disk bytes per decoded token, and whether the tokens are the
   reference's. mlx-lm, the peer, runs the same checkpoint uncapped and at the smallest cap.
4. Replays the recorded routing through each cache policy (LRU, LFU, pinned; Belady's optimum for
   reference) at the slot counts of the caps; the smallest cap also runs with read-ahead on.
5. Projects decode speed on Macs: compute time from bytes per token and the chip's bandwidth, plus disk
   time from the disk bytes per token of uniform routing (conservative: recorded routing hits more)
   and an SSD's read rate -- this machine's measured one (the same model checked against step 3's
   measurements: "modelled tok/s") and Apple's published 7.4 GB/s (the projection's parameter) --
   added, not overlapped.

Needs root for the cgroup caps (skipped otherwise: then `--max-memory` stands in for the cap).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import mmap
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from memory_cap import run_capped, unavailable, weight_bytes, worker  # noqa: E402

from gptoss_metal.architecture import StoredTensor, TensorSpec, bytes_per_decoded_token, collect_tensors  # noqa: E402
from gptoss_metal.converters import PRESETS, convert, synth  # noqa: E402
from gptoss_metal.converters.layouts import FLOAT, expected_runtime  # noqa: E402
from gptoss_metal.metal_runtime.bench import APPLE_BANDWIDTH_GBS, APPLE_SSD_READ_GBS  # noqa: E402
from gptoss_metal.metal_runtime.expert_cache import make_policy  # noqa: E402
from gptoss_metal.metal_runtime.memory import GIB, KV_RESERVE_POSITIONS, RUNTIME_RESERVE, plan_memory  # noqa: E402

WORK = Path(__file__).parent / ".work" / "bigger_than_memory"
DEPTH_WORKER = Path(__file__).with_name("depth_worker.py")
TIMEOUT_S = 3600
# Macs for the projection: (name, unified memory GiB, chip bandwidth key). Metal's recommended working set
# (what macOS lets the GPU wire, MLX's max_recommended_working_set_size) is assumed 2/3 of memory up to
# 36 GB and 3/4 above: macOS's default wired limit as commonly reported, not an Apple specification.
MACS = (("M4, 16 GB", 16, "M4"), ("M4 Pro, 24 GB", 24, "M4 Pro"), ("M4 Pro, 48 GB", 48, "M4 Pro"),
        ("M4 Max, 64 GB", 64, "M4 Max (40-core GPU)"), ("M4 Max, 128 GB", 128, "M4 Max (40-core GPU)"))


def checkpoint(layers: int, vocab: int) -> Path:
    dst = WORK / f"w20-l{layers}-v{vocab}"
    if (dst / "config.json").exists():
        return dst
    arch = dataclasses.replace(PRESETS["20b"], num_hidden_layers=layers, vocab_size=vocab, layer_types=())
    src = synth(WORK / "hf", arch=arch, fmt="hf", seed=0, force=True)
    convert(src, dst, force=True)
    shutil.rmtree(src)
    return dst


# -- 2. read bandwidth --------------------------------------------------------------------------------


def drop_page_cache(model: Path) -> None:
    """Forget the pages of the model's files this machine holds, so reads come from the disk."""
    for f in Path(model).glob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_bandwidth(model: Path, reads: int = 64) -> dict[str, float]:
    """GB/s reading distinct experts' gate weights (4.1 MB each, at random over the layers), three ways."""
    stored = collect_tensors(model)
    tensors = [t for name, t in sorted(stored.items()) if name.endswith("gate_proj.weight")]
    rng = np.random.default_rng(0)
    picks = [(tensors[i % len(tensors)], int(e)) for i, e in
             enumerate(rng.permutation(tensors[0].spec.shape[0] * len(tensors))[:reads] // len(tensors))]
    row = tensors[0].spec.row_bytes
    buf = np.empty(row, dtype=np.uint8)
    fds = {t.path: os.open(t.path, os.O_RDONLY) for t, _ in picks}
    out = {}

    def timed(read) -> float:
        start = time.perf_counter()
        for t, e in picks:
            read(t, e)
        return reads * row / (time.perf_counter() - start) / 1e9

    try:
        drop_page_cache(model)
        out["pread, page cache dropped"] = timed(lambda t, e: os.preadv(fds[t.path], [buf], t.rows_offset(e)))
        out["pread, from the page cache"] = timed(lambda t, e: os.preadv(fds[t.path], [buf], t.rows_offset(e)))
        drop_page_cache(model)
        maps = {path: mmap.mmap(fd, 0, prot=mmap.PROT_READ) for path, fd in fds.items()}
        out["mmap copy, page cache dropped"] = timed(
            lambda t, e: buf.__setitem__(slice(None), np.frombuffer(maps[t.path], np.uint8, row, t.rows_offset(e))))
        for m in maps.values():
            m.close()
    finally:
        for fd in fds.values():
            os.close(fd)
    return out


# -- 3. runs ----------------------------------------------------------------------------------------


def run_alone(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    if out.returncode != 0:
        return {"failed": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_cap(cmd: list[str], cap: int, model: Path) -> dict:
    drop_page_cache(model)  # the cache's misses come from the disk, not from pages an earlier run left
    if unavailable() is None:
        r = run_capped(cmd, cap, TIMEOUT_S)
        if r.killed:
            return {"killed": True, "max_usage": r.max_usage}
        if r.returncode != 0:
            return {"failed": r.stderr[-2000:]}
        return {**r.report(), "max_usage": r.max_usage}
    # no cgroups here: the budget the cap would leave, given explicitly
    return run_alone([*cmd, "--max-memory-gib", f"{(cap - RUNTIME_RESERVE - 0.15 * GIB) / GIB:.3f}"])


# -- 4. policies on the recorded routing ------------------------------------------------------------


def replay(trace: dict, slots: int, policy: str) -> float:
    """Decode hit rate of a policy on recorded routing, with a pool warmed like the cache's (prefill's
    experts, most used first, fill the slots; LFU counts include prefill)."""
    decode, prefill = trace["decode"], trace["prefill"]
    layers = decode.shape[1]
    hits = total = 0
    for layer in range(layers):
        p = make_policy(policy, layers, slots) if policy != "belady" else None
        resident: list[int] = []
        seen = [int(e) for e in np.argsort(-prefill[layer], kind="stable") if prefill[layer][e] > 0]
        if p is not None:
            for e in seen:
                p.used(layer, np.array([e] * int(prefill[layer][e])))
        resident = seen[:slots]
        steps = [set(s.tolist()) for s in decode[:, layer]]
        for i, need in enumerate(steps):
            hits += len(need & set(resident))
            total += len(need)
            missing = [e for e in need if e not in resident]
            room = slots - len(resident)
            evict = max(0, len(missing) - room)
            if evict:
                if p is not None:
                    victims = p.victims(layer, resident, evict, need)
                else:  # Belady: the resident expert needed furthest in the future goes first
                    def next_use(e: int) -> int:
                        return next((j for j in range(i + 1, len(steps)) if e in steps[j]), len(steps) + 1)

                    victims = sorted((e for e in resident if e not in need), key=lambda e: -next_use(e))[:evict]
                resident = [e for e in resident if e not in victims]
            resident += missing
            if p is not None:
                p.used(layer, np.array(sorted(need)))
    return hits / total if total else 0.0


# -- 5. projections ---------------------------------------------------------------------------------


def _stored(preset: str) -> dict[str, StoredTensor]:
    specs = [TensorSpec(e.name, "BF16" if e.dtype == FLOAT else e.dtype, e.shape)
             for e in expected_runtime(PRESETS[preset], {})]
    return {s.name: StoredTensor(s, Path("/dev/null"), 0) for s in specs}


def projection(preset: str, gib: int, chip: str, ssd_gbs: float) -> dict:
    """Decode tok/s of `preset` on a Mac of `gib` GB: (bytes per token / bandwidth) + (disk bytes / SSD)."""
    arch = PRESETS[preset]
    working_set = gib * GIB * (2 / 3 if gib <= 36 else 3 / 4)
    budget = int(working_set - arch.kv_bytes(KV_RESERVE_POSITIONS, 2) - RUNTIME_RESERVE)
    plan = plan_memory(arch, _stored(preset), 2, budget)

    per_token = bytes_per_decoded_token(((n, t.spec.nbytes) for n, t in _stored(preset).items()), arch)
    compute_s = per_token / (APPLE_BANDWIDTH_GBS[chip] * 1e9)
    if plan.fits:
        return {"flag": "none (fits)", "resident_share": 1.0, "disk_mb": 0.0, "tps": 1 / compute_s}
    disk = plan.expected_disk_bytes_per_token()  # uniform routing: hit rate = resident share
    return {"flag": "default (--max-memory)", "resident_share": plan.resident_share, "disk_mb": disk / 1e6,
            "tps": 1 / (compute_s + disk / (ssd_gbs * 1e9))}


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=201088)
    ap.add_argument("--caps", default="100,75,50")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each configuration, interleaved; medians")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--skip-peer", action="store_true")
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    model = checkpoint(a.layers, a.vocab)
    weights = weight_bytes(model)
    print(f"checkpoint: 20b width, {a.layers} layers, vocab {a.vocab}: {weights / GIB:.2f} GiB of weights ({a.dtype})")
    if unavailable() is not None:
        print(f"no cgroup caps here ({unavailable()}): --max-memory stands in for each cap")

    samples = [read_bandwidth(model) for _ in range(3)]
    bw = {name: _median([s[name] for s in samples]) for name in samples[0]}
    print("\nread bandwidth, distinct 4.1 MB experts at random (median of 3):")
    for name, gbs in bw.items():
        print(f"  {name:32s} {gbs:6.2f} GB/s")
    disk_gbs = bw["pread, page cache dropped"]

    run = ("--prompt-tokens", str(a.prompt_tokens), "--tokens", str(a.gen_tokens), "--runs", "greedy",
           "--dtype", a.dtype)
    trace_path = WORK / "trace.npz"
    traced = run_alone(worker(model, *run, "--max-memory-gib", "1000", "--trace", str(trace_path)))
    trace = dict(np.load(trace_path))
    caps = [int(c) for c in a.caps.split(",")]
    configs = [("unconstrained", None, ())] + [(f"{c}%", c, ()) for c in caps] + \
        [(f"{min(caps)}%, read-ahead", min(caps), ("--prefetch",))]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    for _ in range(a.rounds):
        for name, cap, extra in configs:
            if cap is None:
                results[name].append(run_alone(worker(model, *run, "--max-memory-gib", "1000")))
            else:
                results[name].append(run_cap(worker(model, *run, *extra), weights * cap // 100, model))
    ref = results["unconstrained"]
    ref_tps = _median([r["greedy_decode_tps"] for r in ref if "greedy" in r])
    print(f"\n{a.rounds} rounds, configurations interleaved; decode tok/s is the median (min-max)")
    print("| configuration | slots/layer | decode tok/s | vs unconstrained | hit rate | disk MB/token | "
          "modelled tok/s (this disk) | peak RSS GiB | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = {}
    for name, cap, _ in configs:
        ok = [r for r in results[name] if "greedy" in r]
        if not ok:
            what = "killed" if any(r.get("killed") for r in results[name]) else "failed"
            print(f"| {name} | - | {what} | | | | | | |")
            continue
        tps = [r["greedy_decode_tps"] for r in ok]
        c = ok[0].get("greedy_cache") or {}
        disk = _median([(r.get("greedy_cache") or {}).get("disk_bytes_per_token", 0.0) for r in ok])
        modelled = 1 / (1 / ref_tps + disk / (disk_gbs * 1e9))
        same = all(r["greedy"] == traced["greedy"] for r in ok)
        rows[name] = (ok[0], c)
        label = name if cap is None else f"{name} ({weights * cap / 100 / GIB:.2f} GiB)"
        print(f"| {label} | {ok[0].get('slots', 32)} | {_median(tps):.2f} ({min(tps):.2f}-{max(tps):.2f}) | "
              f"{_median(tps) / ref_tps:.2f}x | {c.get('hit_rate', 1.0):.1%} | {disk / 1e6:.0f} | {modelled:.2f} | "
              f"{max(r['peak_rss_bytes'] for r in ok) / GIB:.2f} | {'yes' if same else 'NO'} |")
    ahead = rows.get(f"{min(caps)}%, read-ahead")
    if ahead:
        c = ahead[1]
        print(f"read-ahead at {min(caps)}%: {c['prefetched']} experts read ahead, {c['prefetch_used']} of them used")

    if not a.skip_peer:
        peer = ("--depth", str(a.prompt_tokens), "--gen-tokens", str(a.gen_tokens), "--real-prefill",
                "--vocab", str(a.vocab))
        cmd = [sys.executable, str(DEPTH_WORKER), "mlx_lm", str(model), *peer]
        alone = run_alone(cmd)
        smallest = min(caps)
        capped = run_cap(cmd, weights * smallest // 100, model) if unavailable() is None else {"skipped": True}
        peer_tps = alone.get("decode_tps", float("nan"))
        print(f"\nmlx-lm (peer), same checkpoint: unconstrained decode {peer_tps:.2f} tok/s (gptoss unconstrained "
              f"{ref_tps / peer_tps:.2f}x); at {smallest}%: {'killed (out of memory)' if capped.get('killed') else capped}")

    print("\ndecode hit rate of each policy on the recorded routing (random weights; Belady: the optimum):")
    slot_counts = sorted({r.get("slots", 0) for r, _ in rows.values() if r.get("cached")}) or [8, 16]
    print("| slots/layer | lru | lfu | pinned | belady |")
    print("|---|---|---|---|---|")
    for slots in slot_counts:
        print(f"| {slots} of 32 | " + " | ".join(f"{replay(trace, slots, p):.1%}"
                                                for p in ("lru", "lfu", "pinned", "belady")) + " |")

    print(f"\nprojected decode tok/s on Macs (not measurements): compute from bytes per token and the chip's "
          f"bandwidth, plus misses of uniform routing read from an SSD at {APPLE_SSD_READ_GBS} GB/s (Apple's published "
          f"rate) or at this machine's measured {disk_gbs:.2f} GB/s; not overlapped")
    print("| model | Mac | flag | experts resident | disk MB/token | tok/s (7.4 GB/s SSD) | tok/s (this disk) |")
    print("|---|---|---|---|---|---|---|")
    for preset in ("20b", "120b"):
        for name, gib, chip in MACS:
            try:
                p = projection(preset, gib, chip, APPLE_SSD_READ_GBS)
                q = projection(preset, gib, chip, disk_gbs)
            except Exception as e:  # noqa: BLE001 - too small even with a cache: say so
                print(f"| gpt-oss-{preset} | {name} | - | does not run ({str(e).split(';')[0]}) | | | |")
                continue
            print(f"| gpt-oss-{preset} | {name} | {p['flag']} | {p['resident_share']:.0%} | {p['disk_mb']:.0f} | "
                  f"{p['tps']:.1f} | {q['tps']:.1f} |")


if __name__ == "__main__":
    main()
