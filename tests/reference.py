"""An independent float64 numpy reference of gpt-oss, written from DESIGN.md's numerics.

It shares no code with metal_runtime: it reads the Hugging Face layout (interleaved gate/up rows,
MXFP4 blocks + E8M0 scales) through helpers.load_tensors/decode_mxfp4 and computes everything
in float64, one token position at a time for attention (no caches, no chunking).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from helpers import decode_mxfp4, load_tensors


def round_bf16(x: np.ndarray) -> np.ndarray:
    """Round float64 values to the nearest bfloat16 (ties to even), returned as float64."""
    f = np.asarray(x, dtype=np.float32)
    bits = f.view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


class Reference:
    """`activations="bfloat16"` rounds every activation a bf16 model stores (embeddings, projections,
    attention and expert outputs, residual sums, norms) while computing exactly in between: the
    reference's own bf16 run, whose error bounds what a bf16 implementation can be expected to have."""

    def __init__(self, hf_dir: Path, activations: str = "float64"):
        self.r = round_bf16 if activations == "bfloat16" else (lambda x: x)
        cfg = json.loads((Path(hf_dir) / "config.json").read_text())
        self.cfg = cfg
        self.w = load_tensors(hf_dir)
        self.L = cfg["num_hidden_layers"]
        self.nh, self.nkv, self.hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
        self.k = cfg["num_experts_per_tok"]
        self.window = cfg["sliding_window"]
        self.limit = cfg.get("swiglu_limit", 7.0)
        self.layer_types = cfg.get("layer_types") or [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.L)
        ]
        self.experts = {}
        for n in range(self.L):
            x = f"model.layers.{n}.mlp.experts"
            self.experts[n] = (
                decode_mxfp4(self.w[f"{x}.gate_up_proj_blocks"], self.w[f"{x}.gate_up_proj_scales"]),
                self.w[f"{x}.gate_up_proj_bias"].astype(np.float64),
                decode_mxfp4(self.w[f"{x}.down_proj_blocks"], self.w[f"{x}.down_proj_scales"]),
                self.w[f"{x}.down_proj_bias"].astype(np.float64),
            )
        rope = cfg["rope_scaling"]
        self.inv_freq, self.concentration = self._yarn(
            self.hd, cfg.get("rope_theta", 150000.0), rope["factor"], rope["original_max_position_embeddings"],
            rope["beta_fast"], rope["beta_slow"],
        )

    @staticmethod
    def _yarn(hd, base, factor, ctx, beta_fast, beta_slow):
        freq = base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
        conc = 0.1 * math.log(factor) + 1.0
        low = hd / 2 * math.log(ctx / (beta_fast * 2 * math.pi)) / math.log(base)
        high = hd / 2 * math.log(ctx / (beta_slow * 2 * math.pi)) / math.log(base)
        ramp = np.clip((np.arange(hd // 2) - low) / (high - low), 0, 1)
        extrap_weight = 1 - ramp
        inv = (1 / (factor * freq)) * (1 - extrap_weight) + (1 / freq) * extrap_weight
        return inv, conc

    def g(self, name: str) -> np.ndarray:
        return self.w[name].astype(np.float64)

    @staticmethod
    def rmsnorm(x, scale, eps=1e-5):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale

    def rope(self, x, positions):
        # x [T, heads, hd], half-split rotation
        ang = positions[:, None] * self.inv_freq[None, :]
        cos, sin = np.cos(ang) * self.concentration, np.sin(ang) * self.concentration
        cos, sin = cos[:, None, :], sin[:, None, :]
        h = self.hd // 2
        x1, x2 = x[..., :h], x[..., h:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def attention(self, n, t, positions):
        p = f"model.layers.{n}.self_attn"
        T = t.shape[0]
        r = self.r
        q = r(t @ self.g(f"{p}.q_proj.weight").T + self.g(f"{p}.q_proj.bias")).reshape(T, self.nh, self.hd)
        k = r(t @ self.g(f"{p}.k_proj.weight").T + self.g(f"{p}.k_proj.bias")).reshape(T, self.nkv, self.hd)
        v = r(t @ self.g(f"{p}.v_proj.weight").T + self.g(f"{p}.v_proj.bias")).reshape(T, self.nkv, self.hd)
        q, k = r(self.rope(q, positions)), r(self.rope(k, positions))
        sinks = self.g(f"{p}.sinks")
        group = self.nh // self.nkv
        sliding = self.layer_types[n] == "sliding_attention"
        out = np.zeros((T, self.nh, self.hd))
        for i in range(T):
            for h in range(self.nh):
                kv = h // group
                visible = [j for j in range(T) if 0 <= i - j and (not sliding or i - j < self.window)]
                scores = np.array([q[i, h] @ k[j, kv] for j in visible]) / math.sqrt(self.hd)
                logits = np.concatenate([scores, [sinks[h]]])
                e = np.exp(logits - logits.max())
                wts = e / e.sum()
                out[i, h] = sum(wts[a] * v[j, kv] for a, j in enumerate(visible))
        return r(r(out.reshape(T, -1)) @ self.g(f"{p}.o_proj.weight").T + self.g(f"{p}.o_proj.bias"))

    def moe(self, n, t):
        p = f"model.layers.{n}.mlp"
        logits = self.r(t @ self.g(f"{p}.router.weight").T + self.g(f"{p}.router.bias"))
        w1, b1, w2, b2 = self.experts[n]
        out = np.zeros_like(t)
        for i in range(t.shape[0]):
            top = np.argsort(-logits[i], kind="stable")[: self.k]
            e = np.exp(logits[i, top] - logits[i, top].max())
            weights = e / e.sum()
            for wt, ex in zip(weights, top):
                h = w1[ex] @ t[i] + b1[ex]
                glu, lin = np.minimum(h[0::2], self.limit), np.clip(h[1::2], -self.limit, self.limit)
                a = glu / (1 + np.exp(-1.702 * glu)) * (lin + 1)
                out[i] += wt * (w2[ex] @ a + b2[ex])
        return self.r(out)

    def logits(self, tokens: list[int]) -> np.ndarray:
        positions = np.arange(len(tokens), dtype=np.float64)
        r = self.r
        x = r(self.g("model.embed_tokens.weight")[np.array(tokens)])
        for n in range(self.L):
            p = f"model.layers.{n}"
            x = r(x + self.attention(n, r(self.rmsnorm(x, self.g(f"{p}.input_layernorm.weight"))), positions))
            x = r(x + self.moe(n, r(self.rmsnorm(x, self.g(f"{p}.post_attention_layernorm.weight")))))
        x = r(self.rmsnorm(x, self.g("model.norm.weight")))
        return r(x @ self.g("lm_head.weight").T)
