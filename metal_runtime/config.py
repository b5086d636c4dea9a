"""Model arguments read from a runtime-layout config.json (Hugging Face gpt_oss keys)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelLoadError


@dataclass
class ModelArgs:
    """Hyper-parameters of the gpt-oss transformer, as mlx-lm's model files lay them out."""

    model_type: str = "gpt_oss"
    num_hidden_layers: int = 24
    num_local_experts: int = 32
    num_experts_per_tok: int = 4
    vocab_size: int = 201088
    hidden_size: int = 2880
    intermediate_size: int = 2880
    head_dim: int = 64
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    sliding_window: int = 128
    rope_theta: float = 150000.0
    rms_norm_eps: float = 1e-5
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    max_position_embeddings: int = 131072
    rope_factor: float = 32.0
    rope_original_context: int = 4096
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_truncate: bool = False
    layer_types: list[str] = field(default_factory=list)
    quantization: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layer_types:
            self.layer_types = [
                "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.num_hidden_layers)
            ]

    @property
    def dense_quantization(self) -> dict[str, dict]:
        """Per-module quantization overrides (dict-valued keys of `quantization`)."""
        return {k: v for k, v in self.quantization.items() if isinstance(v, dict)}

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], where: str = "config.json") -> "ModelArgs":
        if cfg.get("model_type") != "gpt_oss":
            raise ModelLoadError(f"{where}: model_type is {cfg.get('model_type')!r}, expected 'gpt_oss'")
        rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
        try:
            args = cls(
                num_hidden_layers=int(cfg["num_hidden_layers"]),
                num_local_experts=int(cfg.get("num_local_experts", cfg.get("num_experts", 0))),
                num_experts_per_tok=int(cfg.get("num_experts_per_tok", cfg.get("experts_per_token", 4))),
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=int(cfg["hidden_size"]),
                intermediate_size=int(cfg["intermediate_size"]),
                head_dim=int(cfg.get("head_dim", 64)),
                num_attention_heads=int(cfg["num_attention_heads"]),
                num_key_value_heads=int(cfg["num_key_value_heads"]),
                sliding_window=int(cfg["sliding_window"]),
                rope_theta=float(cfg.get("rope_theta", 150000.0)),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                swiglu_limit=float(cfg.get("swiglu_limit", 7.0)),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 131072)),
                rope_factor=float(rope.get("factor", 1.0)) if rope else 1.0,
                rope_original_context=int(rope.get("original_max_position_embeddings", cfg.get("initial_context_length", 4096))),
                rope_beta_fast=float(rope.get("beta_fast", 32.0)),
                rope_beta_slow=float(rope.get("beta_slow", 1.0)),
                rope_truncate=bool(rope.get("truncate", False)),
                layer_types=list(cfg.get("layer_types") or []),
                quantization=dict(cfg.get("quantization") or {}),
            )
        except KeyError as e:
            raise ModelLoadError(f"{where}: missing key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f"{where}: invalid value: {e}") from None
        if args.num_local_experts <= 0 or args.num_experts_per_tok > args.num_local_experts:
            raise ModelLoadError(f"{where}: invalid expert counts")
        if len(args.layer_types) != args.num_hidden_layers:
            raise ModelLoadError(f"{where}: layer_types has {len(args.layer_types)} entries for {args.num_hidden_layers} layers")
        return args

    @classmethod
    def from_path(cls, directory: Path) -> "ModelArgs":
        path = Path(directory) / "config.json"
        try:
            cfg = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelLoadError(f"{directory}: no config.json (is this a converted gpt-oss folder?)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{path}: invalid JSON: {e}") from None
        return cls.from_dict(cfg, str(path))
