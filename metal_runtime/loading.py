"""`load`: a runtime-layout folder (ours or the MLX community's) -> a ready Model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import mlx.core as mx
import mlx.nn as nn

from gptoss_metal.architecture import Architecture, StoredTensor, affine_experts, collect_tensors, foreign_weights

from .config import read_model_config
from .embedding_rows import OnDemandEmbedding
from .errors import ModelLoadError, reported
from .expert_cache import PROJECTIONS, STORED, CacheSettings, ExpertCache, OffloadedExperts
from .expert_paths import CachedExpertsPath, choose_expert_path
from .experts import ExpertPath, SwitchMXFP4GLU
from .kernels import KernelSet
from .memory import MemoryPlan, default_budget, plan_memory
from .model import Model
from .tensor_rows import read_rows

DTYPES = {"bfloat16": mx.bfloat16, "bf16": mx.bfloat16, "float32": mx.float32, "fp32": mx.float32,
          "float16": mx.float16, "fp16": mx.float16}
MAX_LISTED = 6


def _read_weights(paths: list[Path]) -> dict[str, mx.array]:
    """Every tensor, lazily: nothing is read until evaluated (and a tensor never evaluated is never read)."""
    weights: dict[str, mx.array] = {}
    for p in paths:
        try:
            weights.update(mx.load(str(p)))
        except (RuntimeError, ValueError, OSError) as e:
            raise ModelLoadError(f"{p}: cannot read ({e})") from None
    return weights


def _check_layout(directory: Path, weights: dict[str, mx.array]) -> None:
    names = weights.keys()
    if any(n.endswith("gate_up_proj_blocks") for n in names) or "block.0.attn.qkv.weight" in names:
        raise ModelLoadError(
            f"{directory} is an unconverted checkpoint; run `gptoss convert {directory} DST` once, then load DST"
        )
    problem = affine_experts(names)
    if problem:
        raise ModelLoadError(f"{directory}: {problem}")


def _quant_params(path: str, module: nn.Module, weights: dict[str, mx.array], overrides: dict[str, dict]):
    """Quantization of a dense module, from the config override or inferred from the stored tensors."""
    if not hasattr(module, "to_quantized") or f"{path}.scales" not in weights:
        return False
    if path in overrides:
        q = dict(overrides[path])
        q.setdefault("mode", "affine")
        return {k: q[k] for k in ("group_size", "bits", "mode") if k in q}
    scales = weights[f"{path}.scales"]
    in_dims = module.weight.shape[-1]
    group_size = in_dims // scales.shape[-1]
    bits = weights[f"{path}.weight"].shape[-1] * 32 // in_dims
    if scales.dtype != mx.uint8:
        return {"group_size": group_size, "bits": bits, "mode": "affine"}
    if (bits, group_size) == (4, 32):
        return {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    if (bits, group_size) == (8, 32):
        return {"group_size": 32, "bits": 8, "mode": "mxfp8"}
    raise ModelLoadError(f"{path}: cannot infer its quantization ({bits} bits, group size {group_size})")


def _hold_experts(model: Model, stored: dict[str, StoredTensor], weights: dict[str, mx.array], first: int,
                  last: int) -> None:
    """Give every MoE block only experts [first, last): smaller expert modules, and their rows read by
    byte range in place of the lazily loaded full tensors (which are dropped unread)."""
    args = model.args
    if not 0 <= first < last <= args.num_local_experts:
        raise ModelLoadError(f"expert slice [{first}, {last}) is not within the model's {args.num_local_experts} experts")
    for layer in model.layers:
        layer.mlp.experts = SwitchMXFP4GLU(last - first, args.hidden_size, args.intermediate_size,
                                           args.swiglu_limit, args.swiglu_alpha)
    for name in [n for n in weights if ".mlp.experts." in n]:
        t = stored[name]
        if t.spec.shape[0] != args.num_local_experts:
            raise ModelLoadError(f"{t.path}: tensor {name} holds {t.spec.shape[0]} experts, config.json says "
                                 f"{args.num_local_experts}")
        weights[name] = read_rows(t, first, last)


def _is_float(a: mx.array) -> bool:
    return a.dtype in (mx.float32, mx.float16, mx.bfloat16)


def _offload(model: Model, stored: dict[str, StoredTensor], weights: dict[str, mx.array], target: mx.Dtype,
             settings: CacheSettings) -> ExpertCache:
    """Experts into a bounded cache, the embedding table read on demand: their tensors leave `weights`
    unread (lazily loaded arrays never evaluated are never read); every expert's biases stay resident."""
    layers = model.layers
    kept: list[dict[str, StoredTensor]] = []
    biases: list[dict[str, mx.array]] = []
    for n in range(len(layers)):
        x = f"model.layers.{n}.mlp.experts"
        kept.append({name: stored[f"{x}.{name}"] for name in STORED})
        for name in STORED:
            del weights[f"{x}.{name}"]
        biases.append({p: weights.pop(f"{x}.{p}.bias") for p in PROJECTIONS})
    mx.eval(*(b for layer in biases for b in layer.values()))
    cache = ExpertCache(kept, biases, layers[0].mlp.experts, [layer.mlp.router for layer in layers], settings,
                        model.args.num_experts_per_tok)
    for n, layer in enumerate(layers):
        layer.mlp.experts = OffloadedExperts(cache, n)
    embed = model.model.embed_tokens
    parts = {name: stored[f"model.embed_tokens.{name}"] for name in ("weight", "scales", "biases")
             if f"model.embed_tokens.{name}" in weights}
    for name in parts:
        del weights[f"model.embed_tokens.{name}"]
    quantization = ({"group_size": embed.group_size, "bits": embed.bits, "mode": embed.mode}
                    if isinstance(embed, nn.QuantizedEmbedding) else None)

    def count(n: int) -> None:
        cache.stats.embedding_bytes += n

    model.model.embed_tokens = OnDemandEmbedding(parts, target, quantization, on_read=count)
    return cache


def _plan(args: Architecture, stored: dict[str, StoredTensor], target: mx.Dtype, max_memory: Optional[int],
          kv_reserve: Optional[int]) -> MemoryPlan:
    budget = max_memory if max_memory is not None else default_budget(args, kv_reserve, target.size)[0]
    return plan_memory(args, stored, target.size, budget)


def memory_plan(path: Union[str, Path], dtype: str = "bfloat16", max_memory: Optional[int] = None,
                kv_reserve: Optional[int] = None) -> MemoryPlan:
    """What `load` would hold for this folder within `max_memory` (None: what the machine allows less
    `kv_reserve`): the whole model, or dense weights + an expert cache of `slots` per layer."""
    directory = Path(path).expanduser()
    args, _ = read_model_config(directory)
    with reported():
        stored = collect_tensors(directory)
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r} (choose bfloat16 or float32)")
    return _plan(args, stored, DTYPES[dtype], max_memory, kv_reserve)


def load(path: Union[str, Path], dtype: str = "bfloat16", *, lazy: bool = False,
         experts: Union[str, ExpertPath, None] = None, kernels: Optional[KernelSet] = None,
         expert_slice: Optional[tuple[int, int]] = None, max_memory: Optional[int] = None,
         kv_reserve: Optional[int] = None, expert_cache: Optional[CacheSettings] = None) -> Model:
    """Load a converted gpt-oss folder. `dtype` is the activation/dense-weight dtype.

    Expert weights stay MXFP4 whatever `dtype` is; norm gains stay float32 (DESIGN.md numerics).
    `experts` picks how the MoE blocks run (an ExpertPath, or a name: auto, kernels, mlx, host,
    twin; None reads GPTOSS_EXPERT_PATH, default auto); `kernels` is the Metal kernel set to use.
    `expert_slice` (first, last): hold only those experts of every layer, reading just their bytes
    (an expert-parallel rank; its `experts` path maps global expert ids onto them).

    `max_memory`: bytes the model may hold (None: what the machine allows, less `kv_reserve` -- the
    KV budget -- and a runtime reserve; memory.py). A model that does not fit keeps its dense weights
    resident, reads embedding rows on demand and caches its experts (`model.expert_cache`), with the
    same tokens; `expert_cache` sets that cache explicitly (slots, policy) whatever the budget.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ModelLoadError(f"{directory}: no such model folder")
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r} (choose bfloat16 or float32)")
    target = DTYPES[dtype]
    if not any(directory.glob("*.safetensors")):
        problem = foreign_weights(directory)  # a GGUF or PyTorch download: say so before asking for config.json
        if problem:
            raise ModelLoadError(problem)
    args, overrides = read_model_config(directory)
    with reported():
        stored = collect_tensors(directory)  # validated headers: the shared reader's checks, as the converter's
    weights = _read_weights(sorted({t.path for t in stored.values()}))
    _check_layout(directory, weights)
    try:
        path = experts if not isinstance(experts, (str, type(None))) else choose_expert_path(experts, kernels)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
    if expert_slice is not None and (max_memory is not None or expert_cache is not None):
        raise ModelLoadError("--max-memory does not combine with expert parallelism yet: each rank holds its share "
                             "of the experts whole (spread over more ranks to need less memory per rank)")
    if expert_cache is None and expert_slice is None:
        plan = _plan(args, stored, target, max_memory, kv_reserve)
        if not plan.fits:
            expert_cache = CacheSettings(plan.slots, plan.segment)
    model = Model(args, path if expert_cache is None else CachedExpertsPath(path))
    model.model.dtype = target
    weights = model.sanitize(weights)
    if expert_slice is not None:
        _hold_experts(model, stored, weights, *expert_slice)
    nn.quantize(model, class_predicate=lambda p, m: _quant_params(p, m, weights, overrides))

    expected = dict(nn.utils.tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:MAX_LISTED])}{' ...' if len(missing) > MAX_LISTED else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:MAX_LISTED])}{' ...' if len(unexpected) > MAX_LISTED else ''}")
        raise ModelLoadError(f"{directory}: tensors do not match config.json: " + "; ".join(parts))
    for name, arr in weights.items():
        if arr.shape != expected[name].shape:
            raise ModelLoadError(
                f"{directory}: tensor {name} has shape {list(arr.shape)}, config.json implies {list(expected[name].shape)}"
            )
        if _is_float(arr):
            keep_f32 = name.endswith("layernorm.weight") or name == "model.norm.weight"
            weights[name] = arr.astype(mx.float32 if keep_f32 else target)
    if expert_cache is not None:
        model.expert_cache = _offload(model, stored, weights, target, expert_cache)
    model.load_weights(list(weights.items()), strict=True)
    if not lazy:
        mx.eval(model.parameters())
    return model
