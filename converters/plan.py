"""How each source tensor becomes runtime-layout tensors, as byte-level transfers.

Every transfer reads one source tensor in bounded chunks and writes byte ranges of one or more
output tensors. MXFP4 data is never decoded: a 16-byte block (low nibble = even element) read as
four little-endian uint32 words is exactly MLX's mxfp4 packing, so blocks are copied verbatim and
only their dtype/shape metadata changes. The interleaved ``mlp1``/``gate_up_proj`` rows (even =
gate, odd = up) are split by row parity.

Content checks run on the chunks as they stream: E8M0 scale byte 0xFF (NaN) and non-finite dense
values are errors naming file and tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from gptoss_metal.architecture import Architecture

from .errors import ConversionError
from .layouts import HF, ORIGINAL, RUNTIME, Expected
from .safetensors_io import StoredTensor, TensorSpec, iter_chunks, read_range

CHUNK_BYTES = 32 * 1024 * 1024

# A write request: (output tensor name, byte offset inside it, bytes)
Write = tuple[str, int, bytes]


@dataclass(frozen=True)
class Transfer:
    """One source tensor -> output tensors. `kind` picks the byte transform."""

    source: StoredTensor
    role: str  # content check: "dense" | "blocks" | "scales" | "qweight" | "qparams"
    kind: str  # "copy" | "deinterleave" | "quantize"
    outputs: tuple[TensorSpec, ...]
    quant_bits: int = 0

    @property
    def read_bytes(self) -> int:
        return self.source.spec.nbytes


# -- content checks ----------------------------------------------------------------------


def _nonfinite_count(raw: bytes, dtype: str) -> int:
    if dtype == "BF16":
        u = np.frombuffer(raw, dtype="<u2")
        return int(np.count_nonzero((u & 0x7F80) == 0x7F80))
    if dtype == "F16":
        u = np.frombuffer(raw, dtype="<u2")
        return int(np.count_nonzero((u & 0x7C00) == 0x7C00))
    if dtype == "F32":
        u = np.frombuffer(raw, dtype="<u4")
        return int(np.count_nonzero((u & 0x7F800000) == 0x7F800000))
    if dtype == "F64":
        return int(np.count_nonzero(~np.isfinite(np.frombuffer(raw, dtype="<f8"))))
    return 0


def check_chunk(t: StoredTensor, role: str, raw: bytes) -> None:
    if role in ("dense", "qparams"):
        bad = _nonfinite_count(raw, t.spec.dtype)
        if bad:
            raise ConversionError(f"{t.path}: tensor {t.name} holds {bad} non-finite values (NaN/Inf)")
    elif role == "scales":
        bad = int(np.count_nonzero(np.frombuffer(raw, dtype=np.uint8) == 0xFF))
        if bad:
            raise ConversionError(
                f"{t.path}: tensor {t.name} holds {bad} MXFP4 scale bytes 0xFF (E8M0 NaN)"
            )


# -- byte transforms ---------------------------------------------------------------------


def _run_copy(tr: Transfer, check: Callable[[bytes], None]) -> Iterator[Write]:
    (out,) = tr.outputs
    for start, n in iter_chunks(tr.source.spec.nbytes, CHUNK_BYTES):
        raw = read_range(tr.source, start, n)
        check(raw)
        yield out.name, start, raw


def _run_deinterleave(tr: Transfer, check: Callable[[bytes], None]) -> Iterator[Write]:
    """Source rows alternate even/odd along axis 1: even rows -> outputs[0], odd -> outputs[1]."""
    even, odd = tr.outputs
    shape = tr.source.spec.shape
    n_experts, n_rows = shape[0], shape[1]
    row_bytes = tr.source.spec.nbytes // (n_experts * n_rows)
    pair_bytes = 2 * row_bytes
    n_pairs = n_experts * n_rows // 2
    pairs_per_chunk = max(1, CHUNK_BYTES // pair_bytes)
    for first in range(0, n_pairs, pairs_per_chunk):
        count = min(pairs_per_chunk, n_pairs - first)
        raw = read_range(tr.source, first * pair_bytes, count * pair_bytes)
        check(raw)
        arr = np.frombuffer(raw, dtype=np.uint8).reshape(count, 2, row_bytes)
        yield even.name, first * row_bytes, np.ascontiguousarray(arr[:, 0]).tobytes()
        yield odd.name, first * row_bytes, np.ascontiguousarray(arr[:, 1]).tobytes()


def _run_quantize(tr: Transfer, check: Callable[[bytes], None]) -> Iterator[Write]:
    """Affine-quantize a float matrix by row chunks with MLX (groups never cross rows)."""
    from .quantize import quantize_rows

    weight, scales, biases = tr.outputs
    rows, cols = tr.source.spec.shape
    itemsize = tr.source.spec.nbytes // (rows * cols)
    rows_per_chunk = max(1, CHUNK_BYTES // (cols * itemsize))
    w_row, s_row = weight.nbytes // rows, scales.nbytes // rows
    for r0 in range(0, rows, rows_per_chunk):
        n = min(rows_per_chunk, rows - r0)
        raw = read_range(tr.source, r0 * cols * itemsize, n * cols * itemsize)
        check(raw)
        w, s, b = quantize_rows(raw, tr.source.spec.dtype, n, cols, tr.quant_bits)
        yield weight.name, r0 * w_row, w
        yield scales.name, r0 * s_row, s
        yield biases.name, r0 * s_row, b


_RUNNERS = {
    "copy": _run_copy,
    "deinterleave": _run_deinterleave,
    "quantize": _run_quantize,
}


def run_transfer(tr: Transfer) -> Iterator[Write]:
    return _RUNNERS[tr.kind](tr, lambda raw: check_chunk(tr.source, tr.role, raw))


# -- planning ----------------------------------------------------------------------------


def _spec(name: str, dtype: str, shape: tuple[int, ...]) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(int(d) for d in shape))


def _blocks_as_u32(name: str, src: StoredTensor, rows: int) -> TensorSpec:
    e, _, nb, _ = src.spec.shape
    return _spec(name, "U32", (e, rows, nb * 4))


def _plan_experts(arch: Architecture, srcs: dict[str, StoredTensor], prefix: str, names: dict[str, str]) -> list[Transfer]:
    """mlp1/gate_up (interleaved) and mlp2/down tensors of one layer -> runtime experts."""
    I = arch.intermediate_size  # noqa: E741
    x = f"{prefix}.mlp.experts"
    s = {k: srcs[v] for k, v in names.items()}
    up_dtype = s["gu_bias"].spec.dtype
    e = arch.num_local_experts
    return [
        Transfer(s["gu_blocks"], "blocks", "deinterleave", (
            _blocks_as_u32(f"{x}.gate_proj.weight", s["gu_blocks"], I),
            _blocks_as_u32(f"{x}.up_proj.weight", s["gu_blocks"], I))),
        Transfer(s["gu_scales"], "scales", "deinterleave", (
            _spec(f"{x}.gate_proj.scales", "U8", (e, I, s["gu_scales"].spec.shape[2])),
            _spec(f"{x}.up_proj.scales", "U8", (e, I, s["gu_scales"].spec.shape[2])))),
        Transfer(s["gu_bias"], "dense", "deinterleave", (
            _spec(f"{x}.gate_proj.bias", up_dtype, (e, I)),
            _spec(f"{x}.up_proj.bias", up_dtype, (e, I)))),
        Transfer(s["d_blocks"], "blocks", "copy", (
            _blocks_as_u32(f"{x}.down_proj.weight", s["d_blocks"], arch.hidden_size),)),
        Transfer(s["d_scales"], "scales", "copy", (
            _spec(f"{x}.down_proj.scales", "U8", s["d_scales"].spec.shape),)),
        Transfer(s["d_bias"], "dense", "copy", (
            _spec(f"{x}.down_proj.bias", s["d_bias"].spec.dtype, s["d_bias"].spec.shape),)),
    ]


def _dense(src: StoredTensor, out_name: str, quant: dict[str, int]) -> Transfer:
    """A float weight copied as is, or affine-quantized when its module is in `quant`."""
    module = out_name.rsplit(".", 1)[0]
    bits = quant.get(module)
    if bits and out_name.endswith(".weight"):
        rows, cols = src.spec.shape
        from .layouts import DENSE_QUANT_GROUP as gs

        return Transfer(src, "dense", "quantize", (
            _spec(out_name, "U32", (rows, cols * bits // 32)),
            _spec(f"{module}.scales", src.spec.dtype, (rows, cols // gs)),
            _spec(f"{module}.biases", src.spec.dtype, (rows, cols // gs)),
        ), quant_bits=bits)
    return Transfer(src, "dense", "copy", (_spec(out_name, src.spec.dtype, src.spec.shape),))


def _row_views(src: StoredTensor, row_counts: tuple[int, ...]) -> list[StoredTensor]:
    """Consecutive row ranges of a row-major tensor, each itself a contiguous tensor.

    The views keep the source's name (with the row range) so errors point at the real tensor.
    """
    row_bytes = src.spec.nbytes // src.spec.shape[0]
    views, row = [], 0
    for count in row_counts:
        spec = TensorSpec(f"{src.name}[rows {row}:{row + count}]", src.spec.dtype, (count, *src.spec.shape[1:]))
        views.append(StoredTensor(spec, src.path, src.offset + row * row_bytes))
        row += count
    return views


def plan_original(arch: Architecture, srcs: dict[str, StoredTensor], quant: dict[str, int]) -> list[Transfer]:
    hd = arch.head_dim
    q_rows, kv_rows = arch.num_attention_heads * hd, arch.num_key_value_heads * hd
    plan = [_dense(srcs["embedding.weight"], "model.embed_tokens.weight", quant)]
    for n in range(arch.num_hidden_layers):
        b, p = f"block.{n}", f"model.layers.{n}"
        a = f"{p}.self_attn"
        q_w, k_w, v_w = _row_views(srcs[f"{b}.attn.qkv.weight"], (q_rows, kv_rows, kv_rows))
        q_b, k_b, v_b = _row_views(srcs[f"{b}.attn.qkv.bias"], (q_rows, kv_rows, kv_rows))
        plan += [
            _dense(srcs[f"{b}.attn.norm.scale"], f"{p}.input_layernorm.weight", {}),
            _dense(q_w, f"{a}.q_proj.weight", quant),
            _dense(k_w, f"{a}.k_proj.weight", quant),
            _dense(v_w, f"{a}.v_proj.weight", quant),
            _dense(q_b, f"{a}.q_proj.bias", {}),
            _dense(k_b, f"{a}.k_proj.bias", {}),
            _dense(v_b, f"{a}.v_proj.bias", {}),
            _dense(srcs[f"{b}.attn.sinks"], f"{a}.sinks", {}),
            _dense(srcs[f"{b}.attn.out.weight"], f"{a}.o_proj.weight", quant),
            _dense(srcs[f"{b}.attn.out.bias"], f"{a}.o_proj.bias", {}),
            _dense(srcs[f"{b}.mlp.norm.scale"], f"{p}.post_attention_layernorm.weight", {}),
            _dense(srcs[f"{b}.mlp.gate.weight"], f"{p}.mlp.router.weight", {}),
            _dense(srcs[f"{b}.mlp.gate.bias"], f"{p}.mlp.router.bias", {}),
        ]
        plan += _plan_experts(arch, srcs, p, {
            "gu_blocks": f"{b}.mlp.mlp1_weight.blocks", "gu_scales": f"{b}.mlp.mlp1_weight.scales",
            "gu_bias": f"{b}.mlp.mlp1_bias", "d_blocks": f"{b}.mlp.mlp2_weight.blocks",
            "d_scales": f"{b}.mlp.mlp2_weight.scales", "d_bias": f"{b}.mlp.mlp2_bias",
        })
    plan += [
        _dense(srcs["norm.scale"], "model.norm.weight", {}),
        _dense(srcs["unembedding.weight"], "lm_head.weight", quant),
    ]
    return plan


def plan_hf(arch: Architecture, srcs: dict[str, StoredTensor], quant: dict[str, int]) -> list[Transfer]:
    plan: list[Transfer] = []
    for name, src in srcs.items():
        if ".mlp.experts." in name:
            continue
        plan.append(_dense(src, name, quant))
    for n in range(arch.num_hidden_layers):
        x = f"model.layers.{n}.mlp.experts"
        plan += _plan_experts(arch, srcs, f"model.layers.{n}", {
            "gu_blocks": f"{x}.gate_up_proj_blocks", "gu_scales": f"{x}.gate_up_proj_scales",
            "gu_bias": f"{x}.gate_up_proj_bias", "d_blocks": f"{x}.down_proj_blocks",
            "d_scales": f"{x}.down_proj_scales", "d_bias": f"{x}.down_proj_bias",
        })
    return plan


def plan_runtime(expected: list[Expected], srcs: dict[str, StoredTensor], quant: dict[str, int]) -> list[Transfer]:
    """Runtime -> runtime: copies (re-validated, re-sharded), optionally quantizing dense layers."""
    plan = []
    for exp in expected:
        src = srcs[exp.name]
        if exp.role == "dense":
            plan.append(_dense(src, exp.name, quant))
        else:
            plan.append(Transfer(src, exp.role, "copy", (src.spec,)))
    return plan


def plan_conversion(
    layout: str, arch: Architecture, expected: list[Expected], srcs: dict[str, StoredTensor], quant: dict[str, int]
) -> list[Transfer]:
    if layout == ORIGINAL:
        return plan_original(arch, srcs, quant)
    if layout == HF:
        return plan_hf(arch, srcs, quant)
    assert layout == RUNTIME
    return plan_runtime(expected, srcs, quant)
