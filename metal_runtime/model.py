"""The gpt-oss transformer in MLX (numerics of openai/gpt-oss `gpt_oss/torch/model.py`).

Layout and names follow mlx-lm's gpt_oss model so the same folders load in both. Differences that
make this one exact: YaRN's correction range is not rounded, RMSNorm runs in float32 with float32
gains, and sliding-window caches are exact under chunked prefill, trimming and snapshots.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Union

import mlx.core as mx
import mlx.nn as nn

from gptoss_metal.architecture import SLIDING, Architecture

from .cache import Mask, ModelCache
from .errors import ContextOverflowError
from .expert_paths import choose_expert_path
from .experts import ExpertPath
from .moe import MLPBlock
from .rope import YarnRope


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 with a float32 gain, cast back to the activation dtype."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return self.widened(x.astype(mx.float32), x.dtype)

    def widened(self, x32: mx.array, dtype: mx.Dtype) -> mx.array:
        """The norm of an input already in float32 (a residual add hands it over), cast to `dtype`."""
        return mx.fast.rms_norm(x32, self.weight, self.eps).astype(dtype)


@functools.partial(mx.compile, shapeless=True)
def add_widened(x: mx.array, a: mx.array) -> tuple[mx.array, mx.array]:
    """The residual sum and its float32 copy for the next RMSNorm, in one kernel (values unchanged)."""
    h = x + a
    return h, h.astype(mx.float32)


@functools.partial(mx.compile, shapeless=True)
def add_rounded(h: mx.array, y32: mx.array) -> mx.array:
    """The residual sum with the MoE output rounded from float32 once, in one kernel (values unchanged)."""
    return h + y32.astype(h.dtype)


class Attention(nn.Module):
    def __init__(self, args: Architecture, rope: YarnRope):
        super().__init__()
        H, hd = args.hidden_size, args.head_dim
        self.n_heads, self.n_kv, self.head_dim = args.num_attention_heads, args.num_key_value_heads, hd
        self.q_proj = nn.Linear(H, self.n_heads * hd, bias=True)
        self.k_proj = nn.Linear(H, self.n_kv * hd, bias=True)
        self.v_proj = nn.Linear(H, self.n_kv * hd, bias=True)
        self.o_proj = nn.Linear(self.n_heads * hd, H, bias=True)
        self.sinks = mx.zeros((self.n_heads,))
        # YaRN's concentration multiplies cos and sin, i.e. both q and k: its square joins the scale
        self.scale = args.yarn_concentration ** 2 / math.sqrt(hd)
        self._rope = rope

    def __call__(self, x: mx.array, mask, cache=None, offset=0) -> mx.array:
        """x [B, L, H]. For independent sequences decoded together, `mask`, `cache` and `offset` are
        lists with one entry per row: the projections run batched, attention runs per sequence."""
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, L, self.n_kv, self.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv, self.head_dim).transpose(0, 2, 1, 3)
        if isinstance(cache, list):
            o = mx.concatenate([self._attend(q[b : b + 1], k[b : b + 1], v[b : b + 1], mask[b], cache[b], offset[b])
                                for b in range(B)])
        else:
            o = self._attend(q, k, v, mask, cache, offset)
        return self.o_proj(o.transpose(0, 2, 1, 3).reshape(B, L, -1))

    def _attend(self, q: mx.array, k: mx.array, v: mx.array, mask: Mask, cache, offset: int) -> mx.array:
        q, k = self._rope(q, offset), self._rope(k, offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        return mx.fast.scaled_dot_product_attention(
            q, k, v, scale=self.scale, mask=mask, sinks=self.sinks.astype(q.dtype)
        )


class TransformerBlock(nn.Module):
    def __init__(self, args: Architecture, rope: YarnRope, experts: ExpertPath):
        super().__init__()
        self.self_attn = Attention(args, rope)
        self.mlp = MLPBlock(
            args.hidden_size, args.intermediate_size, args.num_local_experts,
            args.num_experts_per_tok, args.swiglu_limit, args.swiglu_alpha, experts,
        )
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def __call__(self, x: mx.array, mask, cache=None, offset=0) -> mx.array:
        h, h32 = add_widened(x, self.self_attn(self.input_layernorm(x), mask, cache, offset))
        return add_rounded(h, self.mlp(self.post_attention_layernorm.widened(h32, h.dtype), out_dtype=mx.float32))


def _uncached_masks(n: int, window: int) -> tuple[Mask, Mask]:
    if n == 1:
        return None, None
    pos = mx.arange(n)
    d = pos[:, None] - pos[None, :]
    return "causal", (d >= 0) & (d < window)


class GptOssModel(nn.Module):
    """Embedding, the transformer blocks (sliding and full attention alternating), the final norm."""

    def __init__(self, args: Architecture, experts: ExpertPath):
        super().__init__()
        self.args = args
        rope = YarnRope(args)
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args, rope, experts) for _ in range(args.num_hidden_layers)]
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.dtype = mx.bfloat16  # activations; set by the loader

    def __call__(self, inputs: mx.array, cache: Union[ModelCache, list[ModelCache], None] = None) -> mx.array:
        """tokens [B, T] -> final hidden states [B, T, H].

        `cache` is one ModelCache for a batch that moves together, or a list of them, one per row,
        for independent sequences decoded in one pass (each at its own position).
        """
        B, T = inputs.shape
        caches = cache if isinstance(cache, list) else None
        offsets = [c.offset for c in caches] if caches else [cache.offset if cache is not None else 0]
        if max(offsets) + T > self.args.max_position_embeddings:
            raise ContextOverflowError(
                f"{max(offsets) + T} positions exceed the model's context of {self.args.max_position_embeddings}"
            )
        if caches:
            masks = [c.masks(T) for c in caches]
        else:
            masks = [cache.masks(T) if cache is not None else _uncached_masks(T, self.args.sliding_window)]
        x = self.embed_tokens(inputs).astype(self.dtype)
        for i, (layer, kind) in enumerate(zip(self.layers, self.args.layer_types)):
            which = 1 if kind == SLIDING else 0
            if caches:
                x = layer(x, [m[which] for m in masks], [c[i] for c in caches], offsets)
            else:
                x = layer(x, masks[0][which], cache[i] if cache is not None else None, offsets[0])
        return self.norm(x)


class Model(nn.Module):
    """gpt-oss: tokens [B, T] -> logits [B, T, vocab].

    `experts` is how every MoE block evaluates its experts (expert_paths.py); the loader chooses it
    once for the backend.
    """

    def __init__(self, args: Architecture, experts: Optional[ExpertPath] = None):
        super().__init__()
        self.model_type = "gpt_oss"
        self.expert_path = experts if experts is not None else choose_expert_path()
        self.model = GptOssModel(args, self.expert_path)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.expert_cache = None  # an ExpertCache when the loader keeps the experts in one (expert_cache.py)

    def __call__(self, inputs: mx.array, cache: Union[ModelCache, list[ModelCache], None] = None) -> mx.array:
        return self.lm_head(self.model(inputs, cache))

    @property
    def args(self) -> Architecture:
        return self.model.args

    @property
    def layers(self) -> list[TransformerBlock]:
        return self.model.layers

    @property
    def dtype(self) -> mx.Dtype:
        return self.model.dtype

    def make_cache(self, trim_slack: int = 0) -> ModelCache:
        return ModelCache(self.args.layer_types, self.args.sliding_window, trim_slack)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Runtime-layout weights need no renaming; drop tensors the model derives itself."""
        return {k: v for k, v in weights.items() if "rotary_emb" not in k}
