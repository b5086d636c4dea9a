"""The three checkpoint layouts we read and the architecture they describe.

- ``original``: OpenAI's ``original/`` folder (``block.N.attn.qkv.weight``, MXFP4 ``mlp1_weight.blocks``).
- ``hf``: the Hugging Face ``openai/gpt-oss-*`` layout (``model.layers.N.mlp.experts.gate_up_proj_blocks``).
- ``runtime``: the MLX ecosystem's gpt_oss layout that metal_runtime and mlx-lm load
  (experts split into ``gate_proj``/``up_proj``/``down_proj`` with uint32 weights, uint8 scales).

`ArchConfig` is the architecture all three share; each layout maps it to expected tensor specs,
so validation is "compare what the files hold with what the config implies".
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConversionError
from .safetensors_io import FLOAT_DTYPES, TensorSpec

ORIGINAL, HF, RUNTIME = "original", "hf", "runtime"
MXFP4_GROUP = 32
DENSE_QUANT_GROUP = 64


@dataclass(frozen=True)
class ArchConfig:
    """Architecture hyper-parameters of a gpt-oss model (names follow openai/gpt-oss)."""

    num_hidden_layers: int
    num_experts: int
    experts_per_token: int
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    head_dim: int
    num_attention_heads: int
    num_key_value_heads: int
    sliding_window: int
    initial_context_length: int = 4096
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0
    rope_ntk_beta: float = 32.0
    swiglu_limit: float = 7.0
    rms_norm_eps: float = 1e-5
    layer_types: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.layer_types:
            object.__setattr__(
                self,
                "layer_types",
                tuple(
                    "sliding_attention" if i % 2 == 0 else "full_attention"
                    for i in range(self.num_hidden_layers)
                ),
            )

    @property
    def qkv_rows(self) -> int:
        return self.head_dim * (self.num_attention_heads + 2 * self.num_key_value_heads)

    @property
    def max_position_embeddings(self) -> int:
        return int(self.initial_context_length * self.rope_scaling_factor)

    def validate(self, where: str) -> None:
        """Reject configurations this runtime cannot run, naming the offending key."""
        positive = [
            "num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
            "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads",
            "sliding_window", "initial_context_length",
        ]
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConversionError(f"{where}: unsupported config: {key} must be a positive integer, got {value!r}")
        problems = []
        if self.hidden_size % MXFP4_GROUP:
            problems.append(f"hidden_size {self.hidden_size} is not a multiple of {MXFP4_GROUP} (MXFP4 blocks)")
        if self.intermediate_size % MXFP4_GROUP:
            problems.append(f"intermediate_size {self.intermediate_size} is not a multiple of {MXFP4_GROUP}")
        if self.experts_per_token > self.num_experts:
            problems.append(f"experts_per_token {self.experts_per_token} > num_experts {self.num_experts}")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads is not a multiple of num_key_value_heads")
        if self.head_dim % 2:
            problems.append("head_dim must be even (rotary embedding)")
        if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= {
            "sliding_attention", "full_attention"
        }:
            problems.append("layer_types must list sliding_attention/full_attention once per layer")
        if self.rope_scaling_factor > 1.0:
            d_half = self.head_dim / 2
            low = d_half * math.log(self.initial_context_length / (self.rope_ntk_beta * 2 * math.pi)) / math.log(self.rope_theta)
            high = d_half * math.log(self.initial_context_length / (self.rope_ntk_alpha * 2 * math.pi)) / math.log(self.rope_theta)
            if not 0 < low < high < d_half - 1:
                problems.append(f"YaRN correction range ({low:.3f}, {high:.3f}) is outside (0, head_dim/2 - 1)")
        if problems:
            raise ConversionError(f"{where}: unsupported config: " + "; ".join(problems))

    # -- config.json writers -------------------------------------------------------------

    def original_config(self) -> dict[str, Any]:
        return {
            "num_hidden_layers": self.num_hidden_layers,
            "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit,
            "head_dim": self.head_dim,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "sliding_window": self.sliding_window,
            "initial_context_length": self.initial_context_length,
            "rope_theta": self.rope_theta,
            "rope_scaling_factor": self.rope_scaling_factor,
            "rope_ntk_alpha": self.rope_ntk_alpha,
            "rope_ntk_beta": self.rope_ntk_beta,
        }

    def hf_config(self) -> dict[str, Any]:
        """The Hugging Face gpt_oss config.json keys (as in openai/gpt-oss-20b)."""
        return {
            "architectures": ["GptOssForCausalLM"],
            "attention_bias": True,
            "attention_dropout": 0.0,
            "eos_token_id": 200002,
            "experts_per_token": self.experts_per_token,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initial_context_length": self.initial_context_length,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_types": list(self.layer_types),
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": "gpt_oss",
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.experts_per_token,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_experts,
            "output_router_logits": False,
            "pad_token_id": 199999,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": {
                "beta_fast": self.rope_ntk_beta,
                "beta_slow": self.rope_ntk_alpha,
                "factor": self.rope_scaling_factor,
                "original_max_position_embeddings": self.initial_context_length,
                "rope_type": "yarn",
                "truncate": False,
            },
            "rope_theta": self.rope_theta,
            "router_aux_loss_coef": 0.9,
            "sliding_window": self.sliding_window,
            "swiglu_limit": self.swiglu_limit,
            "tie_word_embeddings": False,
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d


# -- reading configs ------------------------------------------------------------------------


def _require(cfg: dict, key: str, where: str) -> Any:
    if key not in cfg:
        raise ConversionError(f"{where}: unsupported config: missing key {key!r}")
    return cfg[key]


def arch_from_original(cfg: dict, where: str) -> ArchConfig:
    r = lambda k: _require(cfg, k, where)  # noqa: E731
    return ArchConfig(
        num_hidden_layers=r("num_hidden_layers"),
        num_experts=r("num_experts"),
        experts_per_token=cfg.get("experts_per_token", 4),
        vocab_size=r("vocab_size"),
        hidden_size=r("hidden_size"),
        intermediate_size=r("intermediate_size"),
        head_dim=r("head_dim"),
        num_attention_heads=r("num_attention_heads"),
        num_key_value_heads=r("num_key_value_heads"),
        sliding_window=r("sliding_window"),
        initial_context_length=cfg.get("initial_context_length", 4096),
        rope_theta=float(cfg.get("rope_theta", 150000.0)),
        rope_scaling_factor=float(cfg.get("rope_scaling_factor", 32.0)),
        rope_ntk_alpha=float(cfg.get("rope_ntk_alpha", 1.0)),
        rope_ntk_beta=float(cfg.get("rope_ntk_beta", 32.0)),
        swiglu_limit=float(cfg.get("swiglu_limit", 7.0)),
    )


def arch_from_hf(cfg: dict, where: str) -> ArchConfig:
    """Reads HF gpt_oss keys (also the runtime layout, which keeps them)."""
    if cfg.get("model_type") != "gpt_oss":
        raise ConversionError(f"{where}: unsupported config: model_type is {cfg.get('model_type')!r}, expected 'gpt_oss'")
    r = lambda k: _require(cfg, k, where)  # noqa: E731
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if rope and rope.get("rope_type", rope.get("type", "yarn")) != "yarn":
        raise ConversionError(f"{where}: unsupported config: rope_scaling type {rope.get('rope_type')!r} (only yarn)")
    if rope.get("truncate", False):
        raise ConversionError(f"{where}: unsupported config: rope_scaling.truncate=true (gpt-oss uses the unrounded YaRN range)")
    layer_types = tuple(cfg.get("layer_types") or ())
    return ArchConfig(
        num_hidden_layers=r("num_hidden_layers"),
        num_experts=cfg.get("num_local_experts", cfg.get("num_experts")),
        experts_per_token=cfg.get("num_experts_per_tok", cfg.get("experts_per_token", 4)),
        vocab_size=r("vocab_size"),
        hidden_size=r("hidden_size"),
        intermediate_size=r("intermediate_size"),
        head_dim=cfg.get("head_dim", 64),
        num_attention_heads=r("num_attention_heads"),
        num_key_value_heads=r("num_key_value_heads"),
        sliding_window=r("sliding_window"),
        initial_context_length=int(rope.get("original_max_position_embeddings", cfg.get("initial_context_length", 4096))),
        rope_theta=float(cfg.get("rope_theta", 150000.0)),
        rope_scaling_factor=float(rope.get("factor", 1.0)) if rope else 1.0,
        rope_ntk_alpha=float(rope.get("beta_slow", 1.0)),
        rope_ntk_beta=float(rope.get("beta_fast", 32.0)),
        swiglu_limit=float(cfg.get("swiglu_limit", 7.0)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        layer_types=layer_types,
    )


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


def expected_original(a: ArchConfig) -> list[Expected]:
    H, I, E, V = a.hidden_size, a.intermediate_size, a.num_experts, a.vocab_size
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


def _attn_hf(a: ArchConfig, p: str) -> list[Expected]:
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
        Expected(f"{p}.mlp.router.weight", FLOAT, (a.num_experts, H), "dense"),
        Expected(f"{p}.mlp.router.bias", FLOAT, (a.num_experts,), "dense"),
    ]


def expected_hf(a: ArchConfig) -> list[Expected]:
    H, I, E, V = a.hidden_size, a.intermediate_size, a.num_experts, a.vocab_size
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
def dense_quantizable_modules(a: ArchConfig) -> list[str]:
    mods = ["model.embed_tokens", "lm_head"]
    for n in range(a.num_hidden_layers):
        mods += [f"model.layers.{n}.self_attn.{p}_proj" for p in "qkvo"]
    return mods


def runtime_quant_overrides(cfg: dict) -> dict[str, dict]:
    """Per-module quantization entries of a runtime config (dict-valued keys of `quantization`)."""
    q = cfg.get("quantization") or {}
    return {k: v for k, v in q.items() if isinstance(v, dict)}


def expected_runtime(a: ArchConfig, overrides: dict[str, dict]) -> list[Expected]:
    """Runtime layout tensors; dense modules named in `overrides` are affine-quantized triples."""
    H, I, E, V = a.hidden_size, a.intermediate_size, a.num_experts, a.vocab_size

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


def arch_for_layout(layout: str, cfg: dict, where: str) -> ArchConfig:
    arch = arch_from_original(cfg, where) if layout == ORIGINAL else arch_from_hf(cfg, where)
    arch.validate(where)
    return arch


def expected_for_layout(layout: str, arch: ArchConfig, cfg: dict) -> list[Expected]:
    if layout == ORIGINAL:
        return expected_original(arch)
    if layout == HF:
        return expected_hf(arch)
    return expected_runtime(arch, runtime_quant_overrides(cfg))
