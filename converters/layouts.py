"""The three checkpoint layouts we read and the architecture they describe.

- ``original``: OpenAI's ``original/`` folder (``block.N.attn.qkv.weight``, MXFP4 ``mlp1_weight.blocks``).
- ``hf``: the Hugging Face ``openai/gpt-oss-*`` layout (``model.layers.N.mlp.experts.gate_up_proj_blocks``).
- ``runtime``: the MLX ecosystem's gpt_oss layout that metal_runtime and mlx-lm load
  (experts split into ``gate_proj``/``up_proj``/``down_proj`` with uint32 weights, uint8 scales).

`gptoss_metal.architecture.Architecture` is what all three describe; each layout maps it to expected tensor specs,
so validation is "compare what the files hold with what the config implies".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gptoss_metal.architecture import MXFP4_GROUP, Architecture, ArchitectureError, quantization_overrides

from .errors import ConversionError
from .safetensors_io import FLOAT_DTYPES, TensorSpec

ORIGINAL, HF, RUNTIME = "original", "hf", "runtime"
DENSE_QUANT_GROUP = 64


# -- reading configs ------------------------------------------------------------------------

def arch_from_original(cfg: dict, where: str) -> Architecture:
    try:
        return Architecture.from_original_config(cfg)
    except ArchitectureError as e:
        raise ConversionError(f"{where}: unsupported config: {e}") from None


def arch_from_hf(cfg: dict, where: str) -> Architecture:
    """Reads HF gpt_oss keys (also the runtime layout, which keeps them)."""
    try:
        arch = Architecture.from_hf_config(cfg)
    except ArchitectureError as e:
        raise ConversionError(f"{where}: unsupported config: {e}") from None
    if arch.rope_truncate:
        raise ConversionError(f"{where}: unsupported config: rope_scaling.truncate=true (gpt-oss uses the unrounded YaRN range)")
    return arch


def read_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{directory}: no config.json (is this a gpt-oss checkpoint folder?)")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return cfg


# -- expected tensors ------------------------------------------------------------------------

# A "slot" is what a tensor must look like: an exact dtype, or the class "float" (any float
# dtype: bf16 in the official checkpoints, f32/f16 accepted for hand-made ones).
FLOAT = "float"


@dataclass(frozen=True)
class Expected:
    name: str
    dtype: str  # exact SafeTensors dtype or FLOAT
    shape: tuple[int, ...]
    role: str  # "dense" | "blocks" | "scales" | "qweight" | "qparams" -- what content checks apply

    def matches(self, spec: TensorSpec) -> bool:
        dtype_ok = spec.dtype in FLOAT_DTYPES if self.dtype == FLOAT else spec.dtype == self.dtype
        return dtype_ok and spec.shape == self.shape

    def describe(self) -> str:
        return f"{'float' if self.dtype == FLOAT else self.dtype}{list(self.shape)}"


def expected_original(a: Architecture) -> list[Expected]:
    H, I, E, V = a.hidden_size, a.intermediate_size, a.num_local_experts, a.vocab_size
    nb_h, nb_i = H // MXFP4_GROUP, I // MXFP4_GROUP
    out = [Expected("embedding.weight", FLOAT, (V, H), "dense")]
    for n in range(a.num_hidden_layers):
        p = f"block.{n}"
        out += [
            Expected(f"{p}.attn.norm.scale", FLOAT, (H,), "dense"),
            Expected(f"{p}.attn.qkv.weight", FLOAT, (a.qkv_rows, H), "dense"),
            Expected(f"{p}.attn.qkv.bias", FLOAT, (a.qkv_rows,), "dense"),
            Expected(f"{p}.attn.sinks", FLOAT, (a.num_attention_heads,), "dense"),
            Expected(f"{p}.attn.out.weight", FLOAT, (H, a.num_attention_heads * a.head_dim), "dense"),
            Expected(f"{p}.attn.out.bias", FLOAT, (H,), "dense"),
            Expected(f"{p}.mlp.norm.scale", FLOAT, (H,), "dense"),
            Expected(f"{p}.mlp.gate.weight", FLOAT, (E, H), "dense"),
            Expected(f"{p}.mlp.gate.bias", FLOAT, (E,), "dense"),
            Expected(f"{p}.mlp.mlp1_weight.blocks", "U8", (E, 2 * I, nb_h, 16), "blocks"),
            Expected(f"{p}.mlp.mlp1_weight.scales", "U8", (E, 2 * I, nb_h), "scales"),
            Expected(f"{p}.mlp.mlp1_bias", FLOAT, (E, 2 * I), "dense"),
            Expected(f"{p}.mlp.mlp2_weight.blocks", "U8", (E, H, nb_i, 16), "blocks"),
            Expected(f"{p}.mlp.mlp2_weight.scales", "U8", (E, H, nb_i), "scales"),
            Expected(f"{p}.mlp.mlp2_bias", FLOAT, (E, H), "dense"),
        ]
    out += [
        Expected("norm.scale", FLOAT, (H,), "dense"),
        Expected("unembedding.weight", FLOAT, (V, H), "dense"),
    ]
    return out


def _attn_hf(a: Architecture, p: str) -> list[Expected]:
    H, hd = a.hidden_size, a.head_dim
    q, kv = a.num_attention_heads * hd, a.num_key_value_heads * hd
    return [
        Expected(f"{p}.input_layernorm.weight", FLOAT, (H,), "dense"),
        Expected(f"{p}.self_attn.q_proj.weight", FLOAT, (q, H), "dense"),
        Expected(f"{p}.self_attn.q_proj.bias", FLOAT, (q,), "dense"),
        Expected(f"{p}.self_attn.k_proj.weight", FLOAT, (kv, H), "dense"),
        Expected(f"{p}.self_attn.k_proj.bias", FLOAT, (kv,), "dense"),
        Expected(f"{p}.self_attn.v_proj.weight", FLOAT, (kv, H), "dense"),
        Expected(f"{p}.self_attn.v_proj.bias", FLOAT, (kv,), "dense"),
        Expected(f"{p}.self_attn.o_proj.weight", FLOAT, (H, q), "dense"),
        Expected(f"{p}.self_attn.o_proj.bias", FLOAT, (H,), "dense"),
        Expected(f"{p}.self_attn.sinks", FLOAT, (a.num_attention_heads,), "dense"),
        Expected(f"{p}.post_attention_layernorm.weight", FLOAT, (H,), "dense"),
        Expected(f"{p}.mlp.router.weight", FLOAT, (a.num_local_experts, H), "dense"),
        Expected(f"{p}.mlp.router.bias", FLOAT, (a.num_local_experts,), "dense"),
    ]


def expected_hf(a: Architecture) -> list[Expected]:
    H, I, E, V = a.hidden_size, a.intermediate_size, a.num_local_experts, a.vocab_size
    nb_h, nb_i = H // MXFP4_GROUP, I // MXFP4_GROUP
    out = [Expected("model.embed_tokens.weight", FLOAT, (V, H), "dense")]
    for n in range(a.num_hidden_layers):
        p = f"model.layers.{n}"
        x = f"{p}.mlp.experts"
        out += _attn_hf(a, p) + [
            Expected(f"{x}.gate_up_proj_blocks", "U8", (E, 2 * I, nb_h, 16), "blocks"),
            Expected(f"{x}.gate_up_proj_scales", "U8", (E, 2 * I, nb_h), "scales"),
            Expected(f"{x}.gate_up_proj_bias", FLOAT, (E, 2 * I), "dense"),
            Expected(f"{x}.down_proj_blocks", "U8", (E, H, nb_i, 16), "blocks"),
            Expected(f"{x}.down_proj_scales", "U8", (E, H, nb_i), "scales"),
            Expected(f"{x}.down_proj_bias", FLOAT, (E, H), "dense"),
        ]
    out += [
        Expected("model.norm.weight", FLOAT, (H,), "dense"),
        Expected("lm_head.weight", FLOAT, (V, H), "dense"),
    ]
    return out


# Modules that `--quantize-dense` quantizes (attention projections, embedding, unembedding).
def dense_quantizable_modules(a: Architecture) -> list[str]:
    mods = ["model.embed_tokens", "lm_head"]
    for n in range(a.num_hidden_layers):
        mods += [f"model.layers.{n}.self_attn.{p}_proj" for p in "qkvo"]
    return mods


def expected_runtime(a: Architecture, overrides: dict[str, dict]) -> list[Expected]:
    """Runtime layout tensors; dense modules named in `overrides` are affine-quantized triples."""
    H, I, E, V = a.hidden_size, a.intermediate_size, a.num_local_experts, a.vocab_size

    def dense(module: str, out_dim: int, in_dim: int) -> list[Expected]:
        q = overrides.get(module)
        if q is None:
            return [Expected(f"{module}.weight", FLOAT, (out_dim, in_dim), "dense")]
        bits, gs = int(q.get("bits", 4)), int(q.get("group_size", DENSE_QUANT_GROUP))
        mode = q.get("mode", "affine")
        if mode != "affine" or in_dim % gs or (in_dim * bits) % 32:
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

    q, kv = a.num_attention_heads * a.head_dim, a.num_key_value_heads * a.head_dim
    out = dense("model.embed_tokens", V, H)
    for n in range(a.num_hidden_layers):
        p = f"model.layers.{n}"
        out += [Expected(f"{p}.input_layernorm.weight", FLOAT, (H,), "dense")]
        for proj, o, i in (("q", q, H), ("k", kv, H), ("v", kv, H), ("o", H, q)):
            out += dense(f"{p}.self_attn.{proj}_proj", o, i)
            out += [Expected(f"{p}.self_attn.{proj}_proj.bias", FLOAT, (o,), "dense")]
        out += [
            Expected(f"{p}.self_attn.sinks", FLOAT, (a.num_attention_heads,), "dense"),
            Expected(f"{p}.post_attention_layernorm.weight", FLOAT, (H,), "dense"),
        ]
        out += dense(f"{p}.mlp.router", E, H)
        out += [Expected(f"{p}.mlp.router.bias", FLOAT, (E,), "dense")]
        x = f"{p}.mlp.experts"
        out += experts(f"{x}.gate_proj", I, H) + experts(f"{x}.up_proj", I, H) + experts(f"{x}.down_proj", H, I)
    out += [Expected("model.norm.weight", FLOAT, (H,), "dense")]
    out += dense("lm_head", V, H)
    return out


def detect_layout(names: set[str]) -> str | None:
    """Which layout a set of tensor names is, by a tensor only that layout has."""
    if "block.0.attn.qkv.weight" in names or "embedding.weight" in names:
        return ORIGINAL
    if any(n.endswith("mlp.experts.gate_up_proj_blocks") for n in names):
        return HF
    if any(n.endswith("mlp.experts.gate_proj.weight") for n in names):
        return RUNTIME
    return None


def arch_for_layout(layout: str, cfg: dict, where: str) -> Architecture:
    arch = arch_from_original(cfg, where) if layout == ORIGINAL else arch_from_hf(cfg, where)
    try:
        arch.validate()
    except ArchitectureError as e:
        raise ConversionError(f"{where}: unsupported config: {e}") from None
    return arch


def expected_for_layout(layout: str, arch: Architecture, cfg: dict) -> list[Expected]:
    if layout == ORIGINAL:
        return expected_original(arch)
    if layout == HF:
        return expected_hf(arch)
    return expected_runtime(arch, quantization_overrides(cfg))
