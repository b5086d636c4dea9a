"""Synthetic gpt-oss checkpoints: random weights in the exact official layouts.

No real weights can be downloaded in tests or CI, so the real loading code is exercised on
checkpoints this module writes: OpenAI's ``original/`` folder and the Hugging Face layout, with
the real tensor names, dtypes (bf16 dense, uint8 MXFP4 blocks, uint8 E8M0 scales), shapes and
config.json.

Every value comes from a logical parameter (``L3.q_w``, ``L3.mlp1_blocks``, ...) generated in
fixed row chunks from an RNG seeded by (seed, parameter, chunk). Both layouts assemble their
tensors from the same logical parameters, so one seed gives the same weights in both formats,
and a 13 GB 20b checkpoint streams with a few MB in memory.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from gptoss_metal.architecture import MXFP4_GROUP, Architecture, TensorSpec

from .atomic import atomic_directory
from .errors import ConversionError
from .layouts import HF, ORIGINAL, layout_table
from .presets import HF_SHARD_BYTES, PRESETS
from .safetensors_io import ShardedWriter

CHUNK_BYTES = 16 * 2**20
FP4_RMS = math.sqrt(sum(v * v for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6)) / 8)  # rms of a uniform FP4 code


@dataclass(frozen=True)
class Param:
    """A logical parameter: shape, stored dtype and how its values are drawn."""

    key: str
    shape: tuple[int, ...]
    dtype: str  # "BF16" or "U8"
    init: str  # "normal" | "bytes" | "scales"
    mean: float = 0.0
    std: float = 1.0
    scale_center: int = 127

    @property
    def row_bytes(self) -> int:
        item = 2 if self.dtype == "BF16" else 1
        return math.prod(self.shape[1:]) * item

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    @property
    def rows_per_chunk(self) -> int:
        return max(1, CHUNK_BYTES // self.row_bytes)

    def chunk(self, seed: int, index: int) -> np.ndarray:
        """Rows [index*rows_per_chunk, ...) as stored bytes (uint16 for bf16, uint8)."""
        r0 = index * self.rows_per_chunk
        rows = min(self.rows_per_chunk, self.shape[0] - r0)
        shape = (rows, *self.shape[1:])
        rng = np.random.default_rng([seed, zlib.crc32(self.key.encode()), index])
        if self.init == "normal":
            x = rng.standard_normal(shape, dtype=np.float32)
            x *= np.float32(self.std)
            x += np.float32(self.mean)
            return float32_to_bf16_bits(x)
        if self.init == "bytes":
            return rng.integers(0, 256, size=shape, dtype=np.uint8)
        return rng.integers(self.scale_center - 1, self.scale_center + 2, size=shape, dtype=np.uint8)

    def n_chunks(self) -> int:
        return -(-self.shape[0] // self.rows_per_chunk)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (finite inputs)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u >> np.uint32(16)) & np.uint32(1)
    rounded += np.uint32(0x7FFF)
    rounded += u
    rounded >>= np.uint32(16)
    return rounded.astype(np.uint16)


def _scale_center(fan_in: int) -> int:
    """E8M0 byte that gives dequantized weights a std of about 1/sqrt(fan_in)."""
    return 127 + round(math.log2(1.0 / (math.sqrt(fan_in) * FP4_RMS)))


def logical_params(a: Architecture) -> dict[str, Param]:
    H, I, E, V, hd = a.hidden_size, a.intermediate_size, a.num_local_experts, a.vocab_size, a.head_dim
    q, kv = a.num_attention_heads * hd, a.num_key_value_heads * hd
    nb_h, nb_i = H // MXFP4_GROUP, I // MXFP4_GROUP
    ps = [Param("embedding", (V, H), "BF16", "normal")]
    for n in range(a.num_hidden_layers):
        L = f"L{n}."
        ps += [
            Param(L + "attn_norm", (H,), "BF16", "normal", mean=1.0, std=0.1),
            Param(L + "q_w", (q, H), "BF16", "normal", std=H**-0.5),
            Param(L + "k_w", (kv, H), "BF16", "normal", std=H**-0.5),
            Param(L + "v_w", (kv, H), "BF16", "normal", std=H**-0.5),
            Param(L + "q_b", (q,), "BF16", "normal", std=0.1),
            Param(L + "k_b", (kv,), "BF16", "normal", std=0.1),
            Param(L + "v_b", (kv,), "BF16", "normal", std=0.1),
            Param(L + "sinks", (a.num_attention_heads,), "BF16", "normal"),
            Param(L + "o_w", (H, q), "BF16", "normal", std=q**-0.5),
            Param(L + "o_b", (H,), "BF16", "normal", std=0.1),
            Param(L + "mlp_norm", (H,), "BF16", "normal", mean=1.0, std=0.1),
            Param(L + "router_w", (E, H), "BF16", "normal", std=H**-0.5),
            Param(L + "router_b", (E,), "BF16", "normal", std=0.1),
            Param(L + "mlp1_blocks", (E, 2 * I, nb_h, 16), "U8", "bytes"),
            Param(L + "mlp1_scales", (E, 2 * I, nb_h), "U8", "scales", scale_center=_scale_center(H)),
            Param(L + "mlp1_bias", (E, 2 * I), "BF16", "normal", std=0.1),
            Param(L + "mlp2_blocks", (E, H, nb_i, 16), "U8", "bytes"),
            Param(L + "mlp2_scales", (E, H, nb_i), "U8", "scales", scale_center=_scale_center(I)),
            Param(L + "mlp2_bias", (E, H), "BF16", "normal", std=0.1),
        ]
    ps += [
        Param("norm", (H,), "BF16", "normal", mean=1.0, std=0.1),
        Param("unembedding", (V, H), "BF16", "normal", std=H**-0.5),
    ]
    return {p.key: p for p in ps}


def layout_tensors(layout: str, a: Architecture) -> list[tuple[str, list[str]]]:
    """(tensor name, logical parameters concatenated along rows) of a layout, from its table."""
    return [(row.name, list(row.params)) for row in layout_table(layout, a, {})]


def original_tensors(a: Architecture) -> list[tuple[str, list[str]]]:
    """(tensor name, logical parameters) for OpenAI's original/ layout."""
    return layout_tensors(ORIGINAL, a)


def hf_tensors(a: Architecture) -> list[tuple[str, list[str]]]:
    """(tensor name, logical parameters) for the Hugging Face layout."""
    return layout_tensors(HF, a)


def hf_config_json(a: Architecture) -> dict:
    cfg = a.hf_config()
    cfg["quantization_config"] = {
        "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head",
        ],
        "quant_method": "mxfp4",
    }
    return cfg


HF_GENERATION_CONFIG = {
    "bos_token_id": 199998,
    "do_sample": True,
    "eos_token_id": [200002, 199999, 200012],
    "pad_token_id": 199999,
}


def synth(
    dst: str | Path,
    *,
    preset: str = "tiny",
    fmt: str = HF,
    seed: int = 0,
    force: bool = False,
    arch: Optional[Architecture] = None,
    on_start: Optional[Callable[[int, str], None]] = None,
    on_advance: Optional[Callable[[int], None]] = None,
) -> Path:
    """Write a random-weight checkpoint of `preset` (or `arch`) in `fmt` ("original" | "hf")."""
    if arch is None:
        if preset not in PRESETS:
            raise ConversionError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
        arch = PRESETS[preset]
    if fmt not in (ORIGINAL, HF):
        raise ConversionError(f"unknown format {fmt!r} (choose original or hf)")
    params = logical_params(arch)
    layout = original_tensors(arch) if fmt == ORIGINAL else hf_tensors(arch)
    specs = []
    for name, keys in layout:
        first = params[keys[0]]
        rows = sum(params[k].shape[0] for k in keys)
        specs.append(TensorSpec(name, first.dtype, (rows, *first.shape[1:])))
    total = sum(s.nbytes for s in specs)
    dst = Path(dst).expanduser().absolute()
    with atomic_directory(dst, force=force) as tmp:
        if fmt == ORIGINAL:
            (tmp / "config.json").write_text(json.dumps(arch.original_config(), indent=2) + "\n")
            dtypes = {s.name: ("FP4" if s.name.endswith(".blocks") else "UE8" if s.name.endswith(".scales") else s.dtype) for s in specs}
            (tmp / "dtypes.json").write_text(json.dumps(dtypes, indent=2) + "\n")
            writer = ShardedWriter(tmp, specs, max_shard_bytes=total + 1, always_index=False)
        else:
            (tmp / "config.json").write_text(json.dumps(hf_config_json(arch), indent=2) + "\n")
            (tmp / "generation_config.json").write_text(json.dumps(HF_GENERATION_CONFIG, indent=2) + "\n")
            shard = HF_SHARD_BYTES.get(preset, 4_500_000_000)
            writer = ShardedWriter(tmp, specs, max_shard_bytes=shard, metadata={"format": "pt"})
        if on_start:
            on_start(total, f"synth {preset} ({fmt})")
        try:
            for name, keys in layout:
                offset = 0
                for key in keys:
                    p = params[key]
                    for i in range(p.n_chunks()):
                        data = p.chunk(seed, i)
                        writer.write(name, offset + i * p.rows_per_chunk * p.row_bytes, data.tobytes())
                        if on_advance:
                            on_advance(data.nbytes)
                    offset += p.nbytes
        except BaseException:
            writer.abort()
            raise
        writer.close()
    return dst
