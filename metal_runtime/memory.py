"""How much memory a model may use, and what loading does within it (`--max-memory`).

The budget is for the model: its weights and the buffers that stand in for them (the expert cache).
By default it is what the machine allows -- Metal's recommended working set on a Mac (what macOS lets
the GPU wire), available RAM elsewhere (a cgroup's limit included) -- minus the KV budget and a
reserve for activations and the interpreter. `plan_memory` decides from the stored tensors: the whole
model if it fits; else dense weights resident at full precision, the embedding table read on demand,
and the experts in a bounded cache (expert_cache.py) of as many slots per layer as the rest allows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlx.core as mx

from gptoss_metal.architecture import Architecture, StoredTensor, is_embedding_tensor

from .errors import ModelLoadError

GIB = 2**30
RUNTIME_RESERVE = GIB // 2  # activations of a prefill chunk and transients (measured ~0.33 GiB on the CPU)
KV_RESERVE_POSITIONS = 16384  # KV reserved when no KV budget is given: one conversation this long
EMBEDDING_ROWS = 4096  # rows of the embedding table kept when it is read on demand


def size_text(n: int) -> str:
    """Bytes for people: GiB from 1 GiB, MiB below."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


@dataclass(frozen=True)
class MachineMemory:
    bytes: Optional[int]
    source: str  # what the figure is, in words


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def cgroup_room() -> Optional[int]:
    """Bytes this process's memory cgroup still allows (limit - usage); None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # v1
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            limit, usage = _read_int(base / "memory.limit_in_bytes"), _read_int(base / "memory.usage_in_bytes")
        elif controllers == "":  # v2
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            limit, usage = _read_int(base / "memory.max"), _read_int(base / "memory.current")
        else:
            continue
        if limit is not None and usage is not None and limit < 2**60:
            return max(0, limit - usage)
    return None


def available_ram() -> Optional[int]:
    """MemAvailable (Linux); else physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_memory() -> MachineMemory:
    """What this machine lets a model use now."""
    if mx.metal.is_available():
        info = mx.metal.device_info()
        size = info.get("max_recommended_working_set_size")
        if size:
            return MachineMemory(int(size), "Metal's recommended working set")
    ram, room = available_ram(), cgroup_room()
    if room is not None and (ram is None or room < ram):
        return MachineMemory(room, "room left in this process's memory cgroup")
    return MachineMemory(ram, "available RAM")


def default_budget(arch: Architecture, kv_budget: Optional[int] = None, kv_dtype_bytes: int = 2) -> tuple[int, str]:
    """The model's budget when none is given: the machine's memory minus KV and the runtime reserve."""
    machine = machine_memory()
    if machine.bytes is None:
        return 2**62, "unknown machine memory: no limit"
    kv = kv_budget if kv_budget is not None else arch.kv_bytes(KV_RESERVE_POSITIONS, kv_dtype_bytes)
    budget = max(0, machine.bytes - kv - RUNTIME_RESERVE)
    return budget, (f"{machine.source} ({size_text(machine.bytes)}) - KV {size_text(kv)} - "
                    f"runtime {size_text(RUNTIME_RESERVE)}")


# -- the plan ---------------------------------------------------------------------------------------


def _expert_weight(name: str) -> bool:
    return ".mlp.experts." in name and not name.endswith(".bias")


@dataclass(frozen=True)
class MemoryPlan:
    """What loading holds within `budget`: the whole model, or dense + embedding rows + an expert cache."""

    budget: int
    whole: int  # bytes of the model held whole, as loaded (floats in the model's dtype)
    dense: int  # of those, what stays resident when experts are cached: no expert weights, no embedding
    embedding: int  # the embedding table
    embedding_rows: int  # what the rows read on demand may hold
    expert_bytes: int  # one expert of one layer: weights and scales of gate, up, down (MXFP4)
    expert_biases: int  # every expert's biases, all layers (resident)
    layers: int
    num_experts: int
    experts_per_token: int
    slots: int = 0  # per layer; 0: the whole model is loaded
    segment: int = 0  # experts of the buffer for calls in parts (prefill)

    @property
    def fits(self) -> bool:
        return self.slots == 0

    @property
    def cache_bytes(self) -> int:
        return (self.layers * self.slots + self.segment) * self.expert_bytes + self.expert_biases

    @property
    def resident(self) -> int:
        """Bytes held for the model under this plan."""
        return self.whole if self.fits else self.dense + self.embedding_rows + self.cache_bytes

    @property
    def minimum(self) -> int:
        """The smallest budget an expert cache works in: k slots per layer and a segment of k."""
        k = self.experts_per_token
        return self.dense + self.embedding_rows + self.expert_biases + (self.layers * k + k) * self.expert_bytes

    @property
    def resident_share(self) -> float:
        """Share of the experts resident at once."""
        return 1.0 if self.fits else self.slots / self.num_experts

    def expected_disk_bytes_per_token(self, hit_rate: Optional[float] = None) -> int:
        """Expert bytes a decoded token reads from disk: k misses per layer at the given hit rate (default
        the resident share, which uniform routing gives; real routing repeats experts and does better)."""
        if self.fits:
            return 0
        rate = self.resident_share if hit_rate is None else hit_rate
        return int(self.layers * self.experts_per_token * (1 - rate) * self.expert_bytes)


def plan_memory(arch: Architecture, stored: dict[str, StoredTensor], dtype_bytes: int, budget: int) -> MemoryPlan:
    """The plan for a model folder's tensors (`stored`) with floats held in `dtype_bytes` within `budget`."""
    def held(name: str, t: StoredTensor) -> int:
        if t.spec.dtype in ("BF16", "F16", "F32"):
            keep_f32 = name.endswith("layernorm.weight") or name == "model.norm.weight"
            return t.spec.nbytes // (2 if t.spec.dtype != "F32" else 4) * (4 if keep_f32 else dtype_bytes)
        return t.spec.nbytes

    sizes = {name: held(name, t) for name, t in stored.items()}
    whole = sum(sizes.values())
    L, E, k = arch.num_hidden_layers, arch.num_local_experts, arch.num_experts_per_tok
    embedding = sum(n for name, n in sizes.items() if is_embedding_tensor(name))
    experts = sum(n for name, n in sizes.items() if _expert_weight(name))
    biases = sum(n for name, n in sizes.items() if ".mlp.experts." in name and name.endswith(".bias"))
    base = MemoryPlan(budget=budget, whole=whole, dense=whole - embedding - experts - biases, embedding=embedding,
                      embedding_rows=min(embedding, embedding * EMBEDDING_ROWS // arch.vocab_size),
                      expert_bytes=experts // (L * E), expert_biases=biases, layers=L, num_experts=E,
                      experts_per_token=k)
    if whole <= budget:
        return base
    if budget < base.minimum:
        raise ModelLoadError(
            f"the model needs {size_text(whole)} whole and at least {size_text(base.minimum)} with its experts "
            f"cached ({size_text(base.dense)} of dense weights stay resident); {size_text(budget)} allowed. "
            "Raise --max-memory, or shrink the dense weights: `gptoss convert --quantize-dense q8`")
    room = budget - base.dense - base.embedding_rows - biases
    per = base.expert_bytes
    segment = min(E, max(k, room // per // (L + 1)))
    slots = min(E - 1, (room - segment * per) // (L * per))
    return MemoryPlan(**{**vars(base), "slots": int(slots), "segment": int(segment)})
