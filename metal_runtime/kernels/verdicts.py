"""Kernel verdicts remembered per machine and MLX version: is this kernel configuration correct, and faster?

A kernel that fails its self-test or loses its race against the MLX path steps aside; measuring that
costs a moment at first use, so the verdict is kept in a JSON file in the user's cache folder, keyed by
the GPU, the MLX version and a hash of the kernel sources (a new MLX, another Mac or edited kernels
measure again). `GPTOSS_KERNEL_RETIME=1` (or `gptoss doctor --retime`) ignores what is stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx

from . import sources


@dataclass
class Verdict:
    correct: bool
    detail: str  # the self-test's finding, or why it failed
    kernel_ms: Optional[float] = None
    mlx_ms: Optional[float] = None

    @property
    def faster(self) -> bool:
        return self.kernel_ms is not None and self.mlx_ms is not None and self.kernel_ms < self.mlx_ms

    @property
    def use(self) -> bool:
        return self.correct and self.faster

    def describe(self) -> str:
        if not self.correct:
            return f"failed: {self.detail}"
        if self.kernel_ms is None:
            return f"passed ({self.detail})"
        race = f"{self.kernel_ms:.3f} ms vs MLX path {self.mlx_ms:.3f} ms"
        return f"passed, faster ({race}): in use" if self.faster else f"passed, slower ({race}): MLX path in use"


def cache_dir() -> Path:
    """The user's cache folder for gptoss-metal (GPTOSS_CACHE_DIR overrides)."""
    if os.environ.get("GPTOSS_CACHE_DIR"):
        return Path(os.environ["GPTOSS_CACHE_DIR"]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "gptoss-metal"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptoss-metal"


def machine_id() -> str:
    device = platform.machine()
    try:
        if mx.metal.is_available():
            device = str(mx.metal.device_info().get("device_name", device))
    except Exception:  # noqa: BLE001 - identification only
        pass
    kernels = hashlib.sha256("".join(sources.spec(k).source for k in sources.KERNELS).encode()
                             + sources.header().encode()).hexdigest()[:12]
    return f"{device} | mlx {getattr(mx, '__version__', '?')} | kernels {kernels}"


class VerdictStore:
    """Verdicts by configuration for this machine; in memory, and in `path` when given."""

    def __init__(self, path: Optional[Path] = None, machine: Optional[str] = None, retime: Optional[bool] = None):
        self.path = path
        self.machine = machine or machine_id()
        self.retime = os.environ.get("GPTOSS_KERNEL_RETIME") == "1" if retime is None else retime
        self._mem: dict[str, Verdict] = {}
        if path is not None and not self.retime:
            try:
                data = json.loads(path.read_text())
                for key, v in data.get(self.machine, {}).items():
                    self._mem[key] = Verdict(**v)
            except (OSError, ValueError, TypeError):
                pass  # a missing or unreadable file: measure again

    @classmethod
    def default(cls) -> "VerdictStore":
        return cls(cache_dir() / "kernel-verdicts.json")

    def get(self, key: str) -> Optional[Verdict]:
        return self._mem.get(key)

    def put(self, key: str, verdict: Verdict) -> None:
        self._mem[key] = verdict
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (OSError, ValueError):
            data = {}
        data.setdefault(self.machine, {})[key] = asdict(verdict)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only cache folder: the verdict still holds for this process

    def items(self) -> list[tuple[str, Verdict]]:
        return list(self._mem.items())


def time_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of `fn()` evaluated (after warm-up launches)."""
    for _ in range(warmup):
        mx.eval(fn())
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        mx.eval(fn())
        samples.append((time.perf_counter() - t) * 1e3)
    samples.sort()
    return samples[len(samples) // 2]
