"""Compile a Metal kernel body the way MLX wraps it, as C++, and run its grid on the CPU.

    h = MSLKernel(name, input_names, output_names, source, header)   # like mx.fast.metal_kernel
    outs = h(inputs=[...numpy or BF16Array or Python scalars...], template=[...], grid=(...),
             threadgroup=(...), output_shapes=[...], output_dtypes=["float32", ...], schedule="reverse")

The text compiled is exactly MLX's generated source (signature.generate) minus its final
`[[host_name]]` explicit-instantiation line (Metal-only syntax; the launcher instantiates the
template by calling it), preceded by shim.h. Outputs start poisoned (0xFF bytes) so unwritten
elements show. Builds are cached by source hash (g++ -O1 costs ~1 s each).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .signature import BF16Array, Param, TemplateArg, arg_info, generate

SHIM = Path(__file__).with_name("shim.h")
SCHEDULES = {"forward": 0, "reverse": 1, "random": 2}
ERRORS = {1: "simdgroup divergence: lanes wait at different collectives",
          2: "barrier deadlock: not every live thread of the threadgroup reached the same barrier"}


class HarnessError(RuntimeError):
    pass


def compiler() -> Optional[str]:
    return os.environ.get("CXX") if os.environ.get("CXX") and shutil.which(os.environ["CXX"]) else shutil.which("g++")


def cache_dir() -> Path:
    d = Path(os.environ.get("GPTOSS_MSL_CACHE", Path(tempfile.gettempdir()) / "gptoss-msl-cache"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _cpp_arg(p: Param, slot: int) -> str:
    if p.kind == "attr":
        return f"a.{p.name}"
    base = p.ctype.rstrip("*&")
    if p.ctype.endswith("&"):
        return f"*(const {base}*)bufs[{slot}]"
    if p.kind == "output":
        return f"({base}*)bufs[{slot}]"
    return f"(const {base}*)bufs[{slot}]"


def _tmpl(template: Sequence[tuple[str, TemplateArg]]) -> str:
    from .signature import TYPE_STRINGS

    if not template:
        return ""
    vals = []
    for _, a in template:
        vals.append(("true" if a else "false") if isinstance(a, bool) else str(a) if isinstance(a, int) else TYPE_STRINGS[a])
    return "<" + ", ".join(vals) + ">"


class MSLKernel:
    def __init__(self, name: str, input_names: Sequence[str], output_names: Sequence[str], source: str,
                 header: str = ""):
        self.name, self.input_names, self.output_names = name, list(input_names), list(output_names)
        self.source, self.header = source, header
        self._libs: dict[str, ctypes.CDLL] = {}

    def build(self, inputs: Sequence, output_dtypes: Sequence[str], template: Sequence[tuple[str, TemplateArg]] = ()):
        infos = [arg_info(x) for x in inputs]
        kname, text, params = generate(self.name, self.input_names, self.output_names, self.source, self.header,
                                       infos, output_dtypes, template)
        cut = text.find('\ntemplate [[host_name(')
        cpp_kernel = text if cut < 0 else text[:cut] + "\n"
        args = []
        slot = 0
        for p in params:
            if p.kind == "attr":
                args.append(_cpp_arg(p, -1))
            else:
                args.append(_cpp_arg(p, slot))
                slot += 1
        launcher = (
            f'extern "C" int gptoss_launch(void** bufs, const int* grid, const int* tg, int schedule, unsigned seed) {{\n'
            f"  std::function<void(const gptoss_sim::Attrs&)> body = [&](const gptoss_sim::Attrs& a) {{\n"
            f"    (void)a;\n    {kname}{_tmpl(template)}({', '.join(args)});\n  }};\n"
            f"  return gptoss_sim::launch(grid, tg, schedule, seed, body);\n}}\n"
        )
        full = f'#include "{SHIM}"\n{cpp_kernel}\n{launcher}'
        key = hashlib.sha256((full + SHIM.read_text()).encode()).hexdigest()[:24]
        lib = self._libs.get(key)
        if lib is None:
            so = cache_dir() / f"{kname[:60]}-{key}.so"
            if not so.exists():
                cxx = compiler()
                if cxx is None:
                    raise HarnessError("no C++ compiler (g++) found")
                src = cache_dir() / f"{key}.cpp"
                src.write_text(full)
                tmp = so.with_suffix(f".{os.getpid()}.tmp")
                proc = subprocess.run([cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-Wno-attributes",
                                       "-o", str(tmp), str(src)], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise HarnessError(f"compile failed:\n{proc.stderr[-4000:]}")
                os.replace(tmp, so)
            lib = ctypes.CDLL(str(so))
            lib.gptoss_launch.restype = ctypes.c_int
            self._libs[key] = lib
        return lib, params, text

    def __call__(self, *, inputs: Sequence, template: Sequence[tuple[str, TemplateArg]] = (), grid, threadgroup,
                 output_shapes: Sequence[tuple[int, ...]], output_dtypes: Sequence[str], schedule: str = "forward",
                 seed: int = 0) -> list:
        lib, params, _ = self.build(inputs, output_dtypes, template)
        keep = []  # buffers must outlive the call
        ptrs = []
        arrays = []
        for x in inputs:
            if isinstance(x, BF16Array):
                a = np.ascontiguousarray(x.bits)
            elif isinstance(x, bool):
                a = np.array(x, dtype=np.bool_)
            elif isinstance(x, int):
                a = np.array(x, dtype=np.int32)
            elif isinstance(x, float):
                a = np.array(x, dtype=np.float32)
            else:
                a = np.ascontiguousarray(x)
            arrays.append(a)
        outs = []
        for shape, dt in zip(output_shapes, output_dtypes):
            np_dt = np.uint16 if dt == "bfloat16" else np.dtype(dt)
            o = np.empty(shape, dtype=np_dt)
            o.view(np.uint8)[...] = 0xFF
            outs.append(o)
        for p in params:
            if p.kind == "attr":
                continue
            if p.kind == "input":
                buf = arrays[p.index]
            elif p.kind == "shape":
                buf = np.array(arrays[p.index].shape, dtype=np.int32)
            elif p.kind == "strides":
                a = arrays[p.index]
                buf = np.array([s // a.itemsize for s in a.strides], dtype=np.int64)
            elif p.kind == "ndim":
                buf = np.array(arrays[p.index].ndim, dtype=np.int32)
            else:
                buf = outs[p.index]
            keep.append(buf)
            ptrs.append(buf.ctypes.data_as(ctypes.c_void_p))
        argv = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        g = (ctypes.c_int * 3)(*grid)
        t = (ctypes.c_int * 3)(*threadgroup)
        err = lib.gptoss_launch(argv, g, t, SCHEDULES[schedule], ctypes.c_uint(seed))
        if err:
            raise HarnessError(ERRORS.get(err, f"error {err}"))
        return [BF16Array(o) if dt == "bfloat16" else o for o, dt in zip(outs, output_dtypes)]
