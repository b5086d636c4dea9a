"""The three checkpoint layouts we read, each as one table of its tensors.

- ``original``: OpenAI's ``original/`` folder (``block.N.attn.qkv.weight``, MXFP4 ``mlp1_weight.blocks``).
- ``hf``: the Hugging Face ``openai/gpt-oss-*`` layout (``model.layers.N.mlp.experts.gate_up_proj_blocks``).
- ``runtime``: the MLX ecosystem's gpt_oss layout that metal_runtime and mlx-lm load
  (experts split into ``gate_proj``/``up_proj``/``down_proj`` with uint32 weights, uint8 scales).

A layout's table (`layout_table`) is the one place its tensor names are written. Each row says what
a tensor must look like for a given `Architecture` (validation compares the files with it), which
runtime tensors it becomes and how (the conversion plan is derived from it, plan.py), and which
logical parameters it holds (the synthetic writer assembles it from them, synth.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from gptoss_metal.architecture import FLOAT_DTYPES, MXFP4_GROUP, Architecture, TensorSpec

from .errors import ConversionError

ORIGINAL, HF, RUNTIME = "original", "hf", "runtime"
DENSE_QUANT_GROUP = 64

# A row's dtype is an exact SafeTensors dtype or FLOAT: any float dtype (bf16 in the official
# checkpoints, f32/f16 accepted for hand-made ones; a conversion keeps the source's).
FLOAT = "float"

# How a source tensor becomes its runtime tensors:
COPY = "copy"  # the same values (blocks: the same bytes, viewed as uint32 words)
ROWS = "rows"  # consecutive row blocks, one per target (OpenAI's fused qkv)
DEINTERLEAVE = "deinterleave"  # even rows -> targets[0], odd rows -> targets[1] (gate/up of mlp1)


@dataclass(frozen=True)
class Expected:
    """One tensor of a layout: what it must look like, what it becomes, what it is made of."""

    name: str
    dtype: str  # exact SafeTensors dtype or FLOAT
    shape: tuple[int, ...]
    role: str  # "dense" | "blocks" | "scales" | "qweight" | "qparams" -- what content checks apply
    targets: tuple[str, ...] = ()  # runtime tensors it becomes (default: itself)
    how: str = COPY
    params: tuple[str, ...] = ()  # logical parameters (synth.py), concatenated along rows

    def matches(self, spec: TensorSpec) -> bool:
        dtype_ok = spec.dtype in FLOAT_DTYPES if self.dtype == FLOAT else spec.dtype == self.dtype
        return dtype_ok and spec.shape == self.shape

    def describe(self) -> str:
        return f"{'float' if self.dtype == FLOAT else self.dtype}{list(self.shape)}"

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.targets or (self.name,)


def _dense(name: str, shape: tuple[int, ...], param: str, target: str = "") -> Expected:
    return Expected(name, FLOAT, shape, "dense", (target,) if target else (), COPY, (param,))


# -- OpenAI's original/ ------------------------------------------------------------------------


def _original(a: Architecture) -> list[Expected]:
    H, I, E, V = a.hidden_size, a.intermediate_size, a.num_local_experts, a.vocab_size
    q, kv = a.num_attention_heads * a.head_dim, a.num_key_value_heads * a.head_dim
    nb_h, nb_i = H // MXFP4_GROUP, I // MXFP4_GROUP
    out = [_dense("embedding.weight", (V, H), "embedding", "model.embed_tokens.weight")]
    for n in range(a.num_hidden_layers):
        b, p, L = f"block.{n}", f"model.layers.{n}", f"L{n}."
        s, x = f"{p}.self_attn", f"{p}.mlp.experts"
        out += [
            _dense(f"{b}.attn.norm.scale", (H,), L + "attn_norm", f"{p}.input_layernorm.weight"),
            Expected(f"{b}.attn.qkv.weight", FLOAT, (q + 2 * kv, H), "dense",
                     (f"{s}.q_proj.weight", f"{s}.k_proj.weight", f"{s}.v_proj.weight"), ROWS,
                     (L + "q_w", L + "k_w", L + "v_w")),
            Expected(f"{b}.attn.qkv.bias", FLOAT, (q + 2 * kv,), "dense",
                     (f"{s}.q_proj.bias", f"{s}.k_proj.bias", f"{s}.v_proj.bias"), ROWS,
                     (L + "q_b", L + "k_b", L + "v_b")),
            _dense(f"{b}.attn.sinks", (a.num_attention_heads,), L + "sinks", f"{s}.sinks"),
            _dense(f"{b}.attn.out.weight", (H, q), L + "o_w", f"{s}.o_proj.weight"),
            _dense(f"{b}.attn.out.bias", (H,), L + "o_b", f"{s}.o_proj.bias"),
            _dense(f"{b}.mlp.norm.scale", (H,), L + "mlp_norm", f"{p}.post_attention_layernorm.weight"),
            _dense(f"{b}.mlp.gate.weight", (E, H), L + "router_w", f"{p}.mlp.router.weight"),
            _dense(f"{b}.mlp.gate.bias", (E,), L + "router_b", f"{p}.mlp.router.bias"),
        ]
        out += _source_experts(a, {
            "gu_blocks": f"{b}.mlp.mlp1_weight.blocks", "gu_scales": f"{b}.mlp.mlp1_weight.scales",
            "gu_bias": f"{b}.mlp.mlp1_bias", "d_blocks": f"{b}.mlp.mlp2_weight.blocks",
            "d_scales": f"{b}.mlp.mlp2_weight.scales", "d_bias": f"{b}.mlp.mlp2_bias"}, x, L, nb_h, nb_i)
    return out + [
        _dense("norm.scale", (H,), "norm", "model.norm.weight"),
        _dense("unembedding.weight", (V, H), "unembedding", "lm_head.weight"),
    ]


def _source_experts(a: Architecture, names: dict[str, str], x: str, L: str, nb_h: int, nb_i: int) -> list[Expected]:
    """The MXFP4 experts of one layer as OpenAI and Hugging Face store them (gate/up interleaved)."""
    H, I, E = a.hidden_size, a.intermediate_size, a.num_local_experts
    return [
        Expected(names["gu_blocks"], "U8", (E, 2 * I, nb_h, 16), "blocks",
                 (f"{x}.gate_proj.weight", f"{x}.up_proj.weight"), DEINTERLEAVE, (L + "mlp1_blocks",)),
        Expected(names["gu_scales"], "U8", (E, 2 * I, nb_h), "scales",
                 (f"{x}.gate_proj.scales", f"{x}.up_proj.scales"), DEINTERLEAVE, (L + "mlp1_scales",)),
        Expected(names["gu_bias"], FLOAT, (E, 2 * I), "dense",
                 (f"{x}.gate_proj.bias", f"{x}.up_proj.bias"), DEINTERLEAVE, (L + "mlp1_bias",)),
        Expected(names["d_blocks"], "U8", (E, H, nb_i, 16), "blocks", (f"{x}.down_proj.weight",), COPY,
                 (L + "mlp2_blocks",)),
        Expected(names["d_scales"], "U8", (E, H, nb_i), "scales", (f"{x}.down_proj.scales",), COPY,
                 (L + "mlp2_scales",)),
        Expected(names["d_bias"], FLOAT, (E, H), "dense", (f"{x}.down_proj.bias",), COPY, (L + "mlp2_bias",)),
    ]


# -- Hugging Face -------------------------------------------------------------------------------


def _attention_and_router(a: Architecture, n: int) -> list[Expected]:
    """Layer n's dense tensors under their Hugging Face names (which the runtime layout keeps)."""
    H, E = a.hidden_size, a.num_local_experts
    q, kv = a.num_attention_heads * a.head_dim, a.num_key_value_heads * a.head_dim
    p, L = f"model.layers.{n}", f"L{n}."
    s = f"{p}.self_attn"
    return [
        _dense(f"{p}.input_layernorm.weight", (H,), L + "attn_norm"),
        _dense(f"{s}.q_proj.weight", (q, H), L + "q_w"),
        _dense(f"{s}.q_proj.bias", (q,), L + "q_b"),
        _dense(f"{s}.k_proj.weight", (kv, H), L + "k_w"),
        _dense(f"{s}.k_proj.bias", (kv,), L + "k_b"),
        _dense(f"{s}.v_proj.weight", (kv, H), L + "v_w"),
        _dense(f"{s}.v_proj.bias", (kv,), L + "v_b"),
        _dense(f"{s}.o_proj.weight", (H, q), L + "o_w"),
        _dense(f"{s}.o_proj.bias", (H,), L + "o_b"),
        _dense(f"{s}.sinks", (a.num_attention_heads,), L + "sinks"),
        _dense(f"{p}.post_attention_layernorm.weight", (H,), L + "mlp_norm"),
        _dense(f"{p}.mlp.router.weight", (E, H), L + "router_w"),
        _dense(f"{p}.mlp.router.bias", (E,), L + "router_b"),
    ]


def _hf_globals(a: Architecture) -> tuple[Expected, Expected, Expected]:
    """The embedding, the final norm and the unembedding under their Hugging Face names."""
    H, V = a.hidden_size, a.vocab_size
    return (_dense("model.embed_tokens.weight", (V, H), "embedding"), _dense("model.norm.weight", (H,), "norm"),
            _dense("lm_head.weight", (V, H), "unembedding"))


def _hf(a: Architecture) -> list[Expected]:
    nb_h, nb_i = a.hidden_size // MXFP4_GROUP, a.intermediate_size // MXFP4_GROUP
    embedding, norm, unembedding = _hf_globals(a)
    out = [embedding]
    for n in range(a.num_hidden_layers):
        x = f"model.layers.{n}.mlp.experts"
        out += _attention_and_router(a, n) + _source_experts(a, {
            "gu_blocks": f"{x}.gate_up_proj_blocks", "gu_scales": f"{x}.gate_up_proj_scales",
            "gu_bias": f"{x}.gate_up_proj_bias", "d_blocks": f"{x}.down_proj_blocks",
            "d_scales": f"{x}.down_proj_scales", "d_bias": f"{x}.down_proj_bias"}, x, f"L{n}.", nb_h, nb_i)
    return out + [norm, unembedding]


# -- the runtime layout -------------------------------------------------------------------------


def dense_quantizable_modules(a: Architecture) -> list[str]:
    """Modules that `--quantize-dense` quantizes (attention projections, embedding, unembedding)."""
    mods = ["model.embed_tokens", "lm_head"]
    for n in range(a.num_hidden_layers):
        mods += [f"model.layers.{n}.self_attn.{p}_proj" for p in "qkvo"]
    return mods


def _runtime(a: Architecture, overrides: dict[str, dict]) -> list[Expected]:
    """Runtime layout tensors; dense modules named in `overrides` are affine-quantized triples."""
    H, I, E = a.hidden_size, a.intermediate_size, a.num_local_experts

    def quantized(row: Expected) -> list[Expected]:
        module = row.name.rsplit(".", 1)[0]
        q = overrides.get(module)
        if q is None or not row.name.endswith(".weight") or len(row.shape) != 2:
            return [row]
        out_dim, in_dim = row.shape
        bits, gs = int(q.get("bits", 4)), int(q.get("group_size", DENSE_QUANT_GROUP))
        if q.get("mode", "affine") != "affine" or in_dim % gs or (in_dim * bits) % 32:
            raise ConversionError(
                f"unsupported quantization for {module}: {q} (only affine with group_size dividing {in_dim})"
            )
        return [
            Expected(f"{module}.weight", "U32", (out_dim, in_dim * bits // 32), "qweight"),
            Expected(f"{module}.scales", FLOAT, (out_dim, in_dim // gs), "qparams"),
            Expected(f"{module}.biases", FLOAT, (out_dim, in_dim // gs), "qparams"),
        ]

    def experts(name: str, out_dim: int, in_dim: int) -> list[Expected]:
        return [
            Expected(f"{name}.weight", "U32", (E, out_dim, in_dim // 8), "blocks"),
            Expected(f"{name}.scales", "U8", (E, out_dim, in_dim // MXFP4_GROUP), "scales"),
            Expected(f"{name}.bias", FLOAT, (E, out_dim), "dense"),
        ]

    embedding, norm, unembedding = _hf_globals(a)
    out = quantized(embedding)
    for n in range(a.num_hidden_layers):
        for row in _attention_and_router(a, n):
            out += quantized(row)
        x = f"model.layers.{n}.mlp.experts"
        out += experts(f"{x}.gate_proj", I, H) + experts(f"{x}.up_proj", I, H) + experts(f"{x}.down_proj", H, I)
    return out + [norm] + quantized(unembedding)


def expected_original(a: Architecture) -> list[Expected]:
    return _original(a)


def expected_hf(a: Architecture) -> list[Expected]:
    return _hf(a)


def expected_runtime(a: Architecture, overrides: dict[str, dict]) -> list[Expected]:
    return _runtime(a, overrides)


_TABLES: dict[str, Callable[..., list[Expected]]] = {ORIGINAL: _original, HF: _hf}


def layout_table(layout: str, arch: Architecture, overrides: dict[str, dict]) -> list[Expected]:
    """Every tensor of `layout` for `arch` (runtime: with the config's quantization overrides)."""
    return _runtime(arch, overrides) if layout == RUNTIME else _TABLES[layout](arch)


def detect_layout(names: set[str]) -> str | None:
    """Which layout a set of tensor names is, by a tensor only that layout has."""
    if "block.0.attn.qkv.weight" in names or "embedding.weight" in names:
        return ORIGINAL
    if any(n.endswith("mlp.experts.gate_up_proj_blocks") for n in names):
        return HF
    if any(n.endswith("mlp.experts.gate_proj.weight") for n in names):
        return RUNTIME
    return None
