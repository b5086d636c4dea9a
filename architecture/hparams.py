"""The gpt-oss hyper-parameters: one dataclass, its config keys (read and written), derived facts.

Field names are the Hugging Face gpt_oss keys, which the runtime layout keeps (so mlx-lm and LM
Studio read our folders). Each fact derived from the architecture lives here once: the YaRN
correction range, the context length, parameter counts, bytes read per decoded token, the KV bytes
per position, and which config entries are per-module quantization overrides. Reading a config.json
file (and the rules on top of the keys) is `config_file.py`'s job.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Optional

from .errors import ArchitectureError

SLIDING, FULL = "sliding_attention", "full_attention"
MXFP4_GROUP = 32  # elements per MXFP4 scale (OCP MX block size)
EOS_TOKEN_ID = 200002  # <|return|>
PAD_TOKEN_ID = 199999  # <|endoftext|>


@dataclass(frozen=True)
class Architecture:
    """Hyper-parameters of a gpt-oss transformer (20b: the defaults of the optional fields)."""

    num_hidden_layers: int
    num_local_experts: int
    num_experts_per_tok: int
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    head_dim: int
    num_attention_heads: int
    num_key_value_heads: int
    sliding_window: int
    rope_theta: float = 150000.0
    rope_factor: float = 32.0  # YaRN scaling factor
    rope_original_context: int = 4096  # YaRN's original_max_position_embeddings (OpenAI: initial_context_length)
    rope_beta_fast: float = 32.0  # OpenAI: rope_ntk_beta
    rope_beta_slow: float = 1.0  # OpenAI: rope_ntk_alpha
    rope_truncate: bool = False  # round the correction range (HF's option; gpt-oss itself does not)
    rms_norm_eps: float = 1e-5
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    max_position_embeddings: int = 0  # 0: rope_original_context * rope_factor
    layer_types: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.layer_types:
            kinds = tuple(SLIDING if i % 2 == 0 else FULL for i in range(self.num_hidden_layers))
            object.__setattr__(self, "layer_types", kinds)
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if not self.max_position_embeddings:
            object.__setattr__(self, "max_position_embeddings", int(self.rope_original_context * self.rope_factor))

    # -- derived facts ----------------------------------------------------------------------

    @property
    def qkv_rows(self) -> int:
        return self.head_dim * (self.num_attention_heads + 2 * self.num_key_value_heads)

    def yarn_correction_range(self) -> tuple[float, float]:
        """YaRN's NTK-by-parts range (low, high) in rotary dimensions; gpt-oss: ~(8.093, 17.398).

        Unrounded, as openai/gpt-oss computes it; `rope_truncate` rounds it outward (floor, ceil).
        """
        d_half = self.head_dim / 2
        base = math.log(self.rope_theta)
        low = d_half * math.log(self.rope_original_context / (self.rope_beta_fast * 2 * math.pi)) / base
        high = d_half * math.log(self.rope_original_context / (self.rope_beta_slow * 2 * math.pi)) / base
        if self.rope_truncate:
            low, high = math.floor(low), math.ceil(high)
        return low, high

    @property
    def yarn_concentration(self) -> float:
        """The attention scaling YaRN multiplies into cos and sin: 0.1 ln(factor) + 1."""
        return 0.1 * math.log(self.rope_factor) + 1.0 if self.rope_factor > 1.0 else 1.0

    @property
    def family(self) -> Optional[str]:
        """The released model this architecture is (`gpt-oss-20b`, `gpt-oss-120b`), by its depth and
        experts; None for anything else (a synthetic preset, a cut-down test model)."""
        return {(24, 32): "gpt-oss-20b", (36, 128): "gpt-oss-120b"}.get(
            (self.num_hidden_layers, self.num_local_experts))

    def kv_bytes_per_position(self, dtype_bytes: int) -> int:
        """Keys + values of one position in one layer."""
        return 2 * self.num_key_value_heads * self.head_dim * dtype_bytes

    def kv_bytes(self, context: int, dtype_bytes: int) -> int:
        """KV-cache bytes one decode step reads at `context` positions (sliding layers hold a window)."""
        per = self.kv_bytes_per_position(dtype_bytes)
        return sum(per * (min(context, self.sliding_window) if t == SLIDING else context) for t in self.layer_types)

    def parameter_counts(self) -> "ParameterCounts":
        H, I, E, V, hd = (self.hidden_size, self.intermediate_size, self.num_local_experts, self.vocab_size,
                          self.head_dim)
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        attn = q * H + 2 * kv * H + q + 2 * kv + H * q + H + self.num_attention_heads + 2 * H
        router = E * H + E
        per_expert = 2 * I * H + 2 * I + H * I + H
        L = self.num_hidden_layers
        embedding = V * H
        total = embedding + L * (attn + router + E * per_expert) + H + V * H
        active = L * (attn + router + self.num_experts_per_tok * per_expert) + H + V * H
        return ParameterCounts(total=total, active=active, experts=L * E * per_expert, embedding=embedding)

    def stored_bytes(self) -> "StoredBytes":
        """Bytes of the runtime layout: experts in MXFP4 (4-bit values, one E8M0 scale byte per 32, bf16
        biases), everything else in bf16. What a process holds in memory once loaded (norm gains aside)."""
        H, I = self.hidden_size, self.intermediate_size
        per_expert = 3 * I * H // 2 + 3 * I * H // MXFP4_GROUP + 2 * (2 * I + H)
        counts = self.parameter_counts()
        return StoredBytes(experts=self.num_hidden_layers * self.num_local_experts * per_expert,
                           dense=2 * (counts.total - counts.experts))

    def expert_split(self, ranks: int) -> list[tuple[int, int]]:
        """The experts [first, last) each of `ranks` expert-parallel ranks holds (contiguous, sizes differ by <= 1)."""
        E = self.num_local_experts
        return [(E * r // ranks, E * (r + 1) // ranks) for r in range(ranks)]

    def rank_bytes(self, ranks: int, stored: Optional["StoredBytes"] = None) -> list[int]:
        """Weight bytes each expert-parallel rank holds: the dense weights (replicated) and its experts.

        `stored`: the bytes of a checkpoint as measured (default what this architecture stores)."""
        b = self.stored_bytes() if stored is None else stored
        return [b.dense + b.experts * (last - first) // self.num_local_experts for first, last in self.expert_split(ranks)]

    # -- validation -------------------------------------------------------------------------

    def validate(self) -> None:
        """Reject what this runtime cannot run; the message names every offending key."""
        positive = ["num_hidden_layers", "num_local_experts", "num_experts_per_tok", "vocab_size", "hidden_size",
                    "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads",
                    "sliding_window", "rope_original_context"]
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ArchitectureError(f"{key} must be a positive integer, got {value!r}")
        problems = []
        if self.hidden_size % MXFP4_GROUP:
            problems.append(f"hidden_size {self.hidden_size} is not a multiple of {MXFP4_GROUP} (MXFP4 blocks)")
        if self.intermediate_size % MXFP4_GROUP:
            problems.append(f"intermediate_size {self.intermediate_size} is not a multiple of {MXFP4_GROUP}")
        if self.num_experts_per_tok > self.num_local_experts:
            problems.append(f"experts_per_token {self.num_experts_per_tok} > num_experts {self.num_local_experts}")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads is not a multiple of num_key_value_heads")
        if self.head_dim % 2:
            problems.append("head_dim must be even (rotary embedding)")
        if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= {SLIDING, FULL}:
            problems.append("layer_types must list sliding_attention/full_attention once per layer")
        if self.rope_factor > 1.0:
            low, high = self.yarn_correction_range()
            if not 0 < low < high < self.head_dim / 2 - 1:
                problems.append(f"YaRN correction range ({low:.3f}, {high:.3f}) is outside (0, head_dim/2 - 1)")
        if problems:
            raise ArchitectureError("; ".join(problems))

    # -- config.json readers ----------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any]) -> "Architecture":
        """Hugging Face gpt_oss keys (also the runtime layout's, and MLX community folders')."""
        if cfg.get("model_type") != "gpt_oss":
            raise ArchitectureError(f"model_type is {cfg.get('model_type')!r}, expected 'gpt_oss'")
        rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
        if not isinstance(rope, Mapping):
            raise ArchitectureError("rope_scaling must be an object")
        if rope and rope.get("rope_type", rope.get("type", "yarn")) != "yarn":
            raise ArchitectureError(f"rope_scaling type {rope.get('rope_type', rope.get('type'))!r} (only yarn)")
        r = _Reader(cfg)
        return cls(
            num_hidden_layers=r.int("num_hidden_layers"),
            num_local_experts=r.int("num_local_experts", alias="num_experts"),
            num_experts_per_tok=r.int("num_experts_per_tok", alias="experts_per_token", default=4),
            vocab_size=r.int("vocab_size"),
            hidden_size=r.int("hidden_size"),
            intermediate_size=r.int("intermediate_size"),
            head_dim=r.int("head_dim", default=64),
            num_attention_heads=r.int("num_attention_heads"),
            num_key_value_heads=r.int("num_key_value_heads"),
            sliding_window=r.int("sliding_window"),
            rope_theta=r.float("rope_theta", default=150000.0),
            rope_factor=_Reader(rope).float("factor", default=1.0) if rope else 1.0,
            rope_original_context=_Reader(rope).int(
                "original_max_position_embeddings", default=r.int("initial_context_length", default=4096)),
            rope_beta_fast=_Reader(rope).float("beta_fast", default=32.0),
            rope_beta_slow=_Reader(rope).float("beta_slow", default=1.0),
            rope_truncate=bool(rope.get("truncate", False)),
            rms_norm_eps=r.float("rms_norm_eps", default=1e-5),
            swiglu_limit=r.float("swiglu_limit", default=7.0),
            swiglu_alpha=r.float("swiglu_alpha", default=1.702),
            max_position_embeddings=r.int("max_position_embeddings", default=0),
            layer_types=tuple(cfg.get("layer_types") or ()),
        )

    @classmethod
    def from_original_config(cls, cfg: Mapping[str, Any]) -> "Architecture":
        """OpenAI's `original/config.json` keys (gpt_oss/torch/model.py's ModelConfig)."""
        r = _Reader(cfg)
        return cls(
            num_hidden_layers=r.int("num_hidden_layers"),
            num_local_experts=r.int("num_experts"),
            num_experts_per_tok=r.int("experts_per_token", default=4),
            vocab_size=r.int("vocab_size"),
            hidden_size=r.int("hidden_size"),
            intermediate_size=r.int("intermediate_size"),
            head_dim=r.int("head_dim"),
            num_attention_heads=r.int("num_attention_heads"),
            num_key_value_heads=r.int("num_key_value_heads"),
            sliding_window=r.int("sliding_window"),
            rope_original_context=r.int("initial_context_length", default=4096),
            rope_theta=r.float("rope_theta", default=150000.0),
            rope_factor=r.float("rope_scaling_factor", default=32.0),
            rope_beta_slow=r.float("rope_ntk_alpha", default=1.0),
            rope_beta_fast=r.float("rope_ntk_beta", default=32.0),
            swiglu_limit=r.float("swiglu_limit", default=7.0),
        )

    # -- config.json writers ----------------------------------------------------------------

    def original_config(self) -> dict[str, Any]:
        return {
            "num_hidden_layers": self.num_hidden_layers,
            "num_experts": self.num_local_experts,
            "experts_per_token": self.num_experts_per_tok,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit,
            "head_dim": self.head_dim,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "sliding_window": self.sliding_window,
            "initial_context_length": self.rope_original_context,
            "rope_theta": self.rope_theta,
            "rope_scaling_factor": self.rope_factor,
            "rope_ntk_alpha": self.rope_beta_slow,
            "rope_ntk_beta": self.rope_beta_fast,
        }

    def hf_config(self) -> dict[str, Any]:
        """The Hugging Face gpt_oss config.json keys (as in openai/gpt-oss-20b)."""
        return {
            "architectures": ["GptOssForCausalLM"],
            "attention_bias": True,
            "attention_dropout": 0.0,
            "eos_token_id": EOS_TOKEN_ID,
            "experts_per_token": self.num_experts_per_tok,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initial_context_length": self.rope_original_context,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_types": list(self.layer_types),
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": "gpt_oss",
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_local_experts,
            "output_router_logits": False,
            "pad_token_id": PAD_TOKEN_ID,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": {
                "beta_fast": self.rope_beta_fast,
                "beta_slow": self.rope_beta_slow,
                "factor": self.rope_factor,
                "original_max_position_embeddings": self.rope_original_context,
                "rope_type": "yarn",
                "truncate": self.rope_truncate,
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


@dataclass
class ParameterCounts:
    total: int
    active: int  # per decoded token, without the embedding table (one row of it is read)
    experts: int
    embedding: int


@dataclass
class StoredBytes:
    experts: int
    dense: int

    @property
    def total(self) -> int:
        return self.experts + self.dense


# -- tensor facts shared by the checkpoint inspector and the loaded model ------------------------


def is_expert_tensor(name: str) -> bool:
    """Expert weights in any layout (runtime/HF `mlp.experts.`, OpenAI `mlp.mlp1_`/`mlp.mlp2_`)."""
    return ".mlp.experts." in name or ".mlp.mlp1_" in name or ".mlp.mlp2_" in name


def is_embedding_tensor(name: str) -> bool:
    return name.startswith(("model.embed_tokens.", "embedding."))


def bytes_per_decoded_token(tensors: Iterable[tuple[str, int]], arch: Architecture) -> int:
    """Weight bytes one decode step reads: experts x k/E, one embedding row, everything else once.

    `tensors` are (name, stored bytes) pairs, so dtypes, quantization scales and biases count as
    stored -- which is what memory bandwidth pays for. Without the KV cache (see `kv_bytes`).
    """
    total = 0.0
    for name, nbytes in tensors:
        if is_expert_tensor(name):
            total += nbytes * arch.num_experts_per_tok / arch.num_local_experts
        elif is_embedding_tensor(name):
            total += nbytes / arch.vocab_size
        else:
            total += nbytes
    return int(round(total))


def quantization_overrides(cfg: Mapping[str, Any]) -> dict[str, dict]:
    """Per-module quantization entries of a config: the dict-valued keys of `quantization`.

    The scalar keys (`group_size`, `bits`, `mode`) describe the experts' MXFP4; a dict-valued key
    names a dense module quantized otherwise (e.g. `model.layers.0.self_attn.q_proj`).
    """
    q = cfg.get("quantization") or {}
    return {k: dict(v) for k, v in q.items() if isinstance(v, Mapping)}


class _Reader:
    """Typed reads of config keys with messages that name the key."""

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = cfg

    def _get(self, key: str, alias: Optional[str], default: Any) -> Any:
        if key in self.cfg:
            return self.cfg[key]
        if alias is not None and alias in self.cfg:
            return self.cfg[alias]
        if default is _MISSING:
            raise ArchitectureError(f"missing key {key!r}")
        return default

    def int(self, key: str, alias: Optional[str] = None, default: Any = None) -> int:
        v = self._get(key, alias, _MISSING if default is None else default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
            raise ArchitectureError(f"{key} must be an integer, got {v!r}")
        return int(v)

    def float(self, key: str, default: Any = None) -> float:
        v = self._get(key, None, _MISSING if default is None else default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ArchitectureError(f"{key} must be a number, got {v!r}")
        return float(v)


_MISSING = object()
