"""The kernel source MLX generates around a `mx.fast.metal_kernel` body, modelled in Python.

Mirrors `write_signature` / kernel naming in MLX's `mlx/backend/common/metal_kernel.cpp`
(checked byte for byte against MLX's own `verbose=True` output by test_msl_harness.py):
- header, then `template <...>` when template arguments are given,
- `[[kernel]] void custom_kernel_<name>[_<template hash>]<_dtype per input/output>(`,
- inputs `const device T* n [[buffer(i)]]` (`const constant T*` under 8 elements, `const constant
  T&` for 0-d, i.e. Python scalars), then `n_shape` / `n_strides` / `n_ndim` if the body mentions
  them; outputs `device T*` (`device atomic<T>*` with atomic outputs);
- the thread attributes whose names occur anywhere in the body (plain substring search);
- the body, and for templates an explicit instantiation with `[[host_name(...)]]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

MAX_CONSTANT_ARRAY_SIZE = 8

# (attribute, type) in MLX's order
ATTRIBUTES = [
    ("dispatch_quadgroups_per_threadgroup", "uint"),
    ("dispatch_simdgroups_per_threadgroup", "uint"),
    ("dispatch_threads_per_threadgroup", "uint3"),
    ("grid_origin", "uint3"),
    ("grid_size", "uint3"),
    ("quadgroup_index_in_threadgroup", "uint"),
    ("quadgroups_per_threadgroup", "uint"),
    ("simdgroup_index_in_threadgroup", "uint"),
    ("simdgroups_per_threadgroup", "uint"),
    ("thread_execution_width", "uint"),
    ("thread_index_in_quadgroup", "uint"),
    ("thread_index_in_simdgroup", "uint"),
    ("thread_index_in_threadgroup", "uint"),
    ("thread_position_in_grid", "uint3"),
    ("thread_position_in_threadgroup", "uint3"),
    ("threadgroup_position_in_grid", "uint3"),
    ("threadgroups_per_grid", "uint3"),
    ("threads_per_grid", "uint3"),
    ("threads_per_simdgroup", "uint"),
    ("threads_per_threadgroup", "uint3"),
]

# numpy dtype name (or "bfloat16") -> MLX's get_type_string
TYPE_STRINGS = {
    "bool": "bool", "uint8": "uint8_t", "uint16": "uint16_t", "uint32": "uint32_t", "uint64": "uint64_t",
    "int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t",
    "float16": "float16_t", "bfloat16": "bfloat16_t", "float32": "float", "float64": "double",
}


@dataclass(frozen=True)
class ArgInfo:
    """What the signature needs to know about one input."""

    dtype: str  # key of TYPE_STRINGS
    ndim: int
    size: int


TemplateArg = Union[int, bool, str]  # str: a dtype name (key of TYPE_STRINGS)


def arg_info(value) -> ArgInfo:
    """Python scalars become 0-d arrays the way mx.fast.metal_kernel converts them."""
    if isinstance(value, bool):
        return ArgInfo("bool", 0, 1)
    if isinstance(value, int):
        return ArgInfo("int32", 0, 1)
    if isinstance(value, float):
        return ArgInfo("float32", 0, 1)
    if isinstance(value, BF16Array):
        return ArgInfo("bfloat16", value.bits.ndim, value.bits.size)
    arr = np.asarray(value)
    return ArgInfo(arr.dtype.name, arr.ndim, arr.size)


class BF16Array:
    """A bfloat16 array for the harness: uint16 bit patterns plus the dtype tag numpy lacks."""

    def __init__(self, bits: np.ndarray):
        self.bits = np.ascontiguousarray(bits, dtype=np.uint16)

    @classmethod
    def from_float32(cls, x: np.ndarray) -> "BF16Array":
        u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        return cls(((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16))

    def to_float32(self) -> np.ndarray:
        return (self.bits.astype(np.uint32) << 16).view(np.float32)

    @property
    def shape(self):
        return self.bits.shape


def _template_value(arg: TemplateArg) -> str:
    if isinstance(arg, bool):
        return "1" if arg else "0"  # C++ stream of a bool prints 1/0
    if isinstance(arg, int):
        return str(arg)
    return TYPE_STRINGS[arg]


def template_def(template: Sequence[tuple[str, TemplateArg]]) -> str:
    return "<" + ", ".join(_template_value(a) for _, a in template) + ">"


def template_hash(tdef: str) -> str:
    out = []
    i = 0
    while i < len(tdef):
        c = tdef[i]
        if c in "<>":
            out.append("_")
        elif c == "," and i + 1 < len(tdef) and tdef[i + 1] == " ":
            out.append("_")
            i += 1
        else:
            out.append(c)
        i += 1
    return "".join(out)[:-1]


def kernel_name(name: str, inputs: Sequence[ArgInfo], output_dtypes: Sequence[str],
                template: Sequence[tuple[str, TemplateArg]]) -> str:
    kname = "custom_kernel_" + name
    if template:
        kname += "_" + template_hash(template_def(template))
    for a in inputs:
        kname += "_" + TYPE_STRINGS[a.dtype]
        if a.ndim == 0:
            kname += "s"
        elif a.size < MAX_CONSTANT_ARRAY_SIZE:
            kname += "c"
    for d in output_dtypes:
        kname += "_" + TYPE_STRINGS[d]
    return kname


@dataclass(frozen=True)
class Param:
    """One kernel parameter as the harness must pass it."""

    kind: str  # "input" | "shape" | "strides" | "ndim" | "output" | "attr"
    name: str
    ctype: str
    index: int  # input/output position (for shape/strides/ndim: the input's position)


def generate(
    name: str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    source: str,
    header: str,
    inputs: Sequence[ArgInfo],
    output_dtypes: Sequence[str],
    template: Sequence[tuple[str, TemplateArg]] = (),
    atomic_outputs: bool = False,
) -> tuple[str, str, list[Param]]:
    """(kernel name, full source text as MLX generates it, parameter list in order)."""
    kname = kernel_name(name, inputs, output_dtypes, template)
    params: list[Param] = []
    text = header
    if template:
        kinds = ["bool" if isinstance(a, bool) else "int" if isinstance(a, int) else "typename" for _, a in template]
        text += "template <" + ", ".join(f"{k} {n}" for k, (n, _) in zip(kinds, template)) + ">\n"
    text += "[[kernel]] void " + kname + "(\n"
    attributes = [(a, t) for a, t in ATTRIBUTES if a in source]
    index = 0
    for i, (nm, info) in enumerate(zip(input_names, inputs)):
        location = "constant" if info.size < MAX_CONSTANT_ARRAY_SIZE else "device"
        ref = "&" if info.ndim == 0 else "*"
        text += f"  const {location} {TYPE_STRINGS[info.dtype]}{ref} {nm} [[buffer({index})]],\n"
        params.append(Param("input", nm, TYPE_STRINGS[info.dtype] + ref, i))
        index += 1
        if info.ndim > 0:
            if nm + "_shape" in source:
                text += f"  const constant int* {nm}_shape [[buffer({index})]],\n"
                params.append(Param("shape", nm + "_shape", "int*", i))
                index += 1
            if nm + "_strides" in source:
                text += f"  const constant int64_t* {nm}_strides [[buffer({index})]],\n"
                params.append(Param("strides", nm + "_strides", "int64_t*", i))
                index += 1
            if nm + "_ndim" in source:
                text += f"  const constant int& {nm}_ndim [[buffer({index})]],\n"
                params.append(Param("ndim", nm + "_ndim", "int&", i))
                index += 1
    for i, (nm, dt) in enumerate(zip(output_names, output_dtypes)):
        t = TYPE_STRINGS[dt]
        text += "  device " + (f"atomic<{t}>" if atomic_outputs else t) + f"* {nm} [[buffer({index})]]"
        params.append(Param("output", nm, t + "*", i))
        # MLX compares the running buffer index with len(inputs) + len(outputs) - 1 (ignoring the
        # extra shape/stride buffers); mirrored as is.
        if index < len(inputs) + len(output_names) - 1 or attributes:
            text += ",\n"
        else:
            text += ") {\n"
        index += 1
    for j, (attr, t) in enumerate(attributes):
        text += f"  {t} {attr} [[{attr}]]"
        params.append(Param("attr", attr, t, j))
        text += ",\n" if j < len(attributes) - 1 else ") {\n"
    text += source + "\n}\n"
    if template:
        tdef = kname + template_def(template)
        text += f'\ntemplate [[host_name("{kname}")]] [[kernel]] decltype({tdef}) {tdef};\n'
    return kname, text, params
