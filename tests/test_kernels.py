"""The Metal kernels, compiled as C++ by the MSL-on-CPU harness, against their MLX twins."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest

from gptoss_metal.metal_runtime.kernels import KernelSet, experts_down_twin, experts_up_twin, route_twin, spec, twin_experts
from gptoss_metal.metal_runtime.kernels import sources
from msl.harness import HarnessError, MSLKernel, compiler
from msl.mlx_bridge import HarnessExecutor, to_host
from msl.signature import ArgInfo, BF16Array, generate

pytestmark = pytest.mark.skipif(compiler() is None, reason="the MSL harness needs a C++ compiler (g++)")
SCHEDULES = ["forward", "reverse", "random"]


def harness(name: str) -> MSLKernel:
    s = spec(name)
    return MSLKernel(s.name, s.input_names, s.output_names, s.source, s.header)


# -- the signature model is MLX's, byte for byte ------------------------------------------------------

MLX_PROBE = textwrap.dedent("""
    import json, sys
    import mlx.core as mx
    case = json.loads(sys.argv[1])
    k = mx.fast.metal_kernel(name=case["name"], input_names=case["inputs"], output_names=case["outputs"],
                             source=case["source"], header=case["header"])
    dt = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16, "uint32": mx.uint32,
          "uint8": mx.uint8, "int32": mx.int32}
    arrays = [mx.zeros(a["shape"], dtype=dt[a["dtype"]]) for a in case["arrays"]]
    def f(*xs):
        ins = list(xs) + case["scalars"]
        tmpl = [(n, dt[v] if isinstance(v, str) else v) for n, v in case["template"]]
        return k(inputs=ins, template=tmpl, grid=(32, 1, 1), threadgroup=(32, 1, 1),
                 output_shapes=[(4,)] * len(case["outputs"]), output_dtypes=[dt[d] for d in case["out_dtypes"]],
                 verbose=True)[0]
    mx.export_function(case["path"], f, *arrays)
""")


def mlx_generated(tmp_path, name, inputs, outputs, source, header, arrays, scalars, template, out_dtypes) -> str:
    case = {"name": name, "inputs": inputs, "outputs": outputs, "source": source, "header": header,
            "arrays": arrays, "scalars": scalars, "template": template, "out_dtypes": out_dtypes,
            "path": str(tmp_path / "k.mlxfn")}
    out = subprocess.run([sys.executable, "-c", MLX_PROBE, json.dumps(case)], capture_output=True, text=True, check=True)
    text = out.stdout
    start = text.index("```\n") + 4
    return text[start:text.rindex("\n```")]


def _infos(arrays, scalars):
    infos = [ArgInfo(a["dtype"], len(a["shape"]), int(np.prod(a["shape"]))) for a in arrays]
    for s in scalars:
        infos.append(ArgInfo("float32" if isinstance(s, float) else "int32", 0, 1))
    return infos


@pytest.mark.parametrize("kernel", ["router", "experts_up", "experts_down"])
def test_signature_matches_mlx_for_our_kernels(tmp_path, kernel):
    s = spec(kernel)
    shapes = {
        "router": ([{"shape": [2, 32], "dtype": "bfloat16"}], sources.router_launch(2, 32, 4)["template"], ["uint32", "float32"]),
        "experts_up": ([{"shape": [1, 64], "dtype": "bfloat16"}, {"shape": [1, 4], "dtype": "uint32"},
                        {"shape": [4, 64, 8], "dtype": "uint32"}, {"shape": [4, 64, 2], "dtype": "uint8"},
                        {"shape": [4, 64], "dtype": "bfloat16"}, {"shape": [4, 64, 8], "dtype": "uint32"},
                        {"shape": [4, 64, 2], "dtype": "uint8"}, {"shape": [4, 64], "dtype": "bfloat16"}],
                       sources.experts_up_launch(1, 4, 64, 64, 7.0, 1.702)["template"], ["float32"]),
        "experts_down": ([{"shape": [1, 4, 64], "dtype": "float32"}, {"shape": [1, 4], "dtype": "uint32"},
                          {"shape": [1, 4], "dtype": "float32"}, {"shape": [4, 64, 8], "dtype": "uint32"},
                          {"shape": [4, 64, 2], "dtype": "uint8"}, {"shape": [4, 64], "dtype": "bfloat16"}],
                         [("T", "bfloat16"), ("H", 64), ("I", 64), ("K", 4)], ["bfloat16"]),
    }[kernel]
    arrays, template, out_dtypes = shapes
    want = mlx_generated(tmp_path, s.name, list(s.input_names), list(s.output_names), s.source, s.header,
                         arrays, [], template, out_dtypes)
    _, ours, _ = generate(s.name, s.input_names, s.output_names, s.source, s.header, _infos(arrays, []),
                          out_dtypes, template)
    assert ours == want


def test_signature_matches_mlx_for_shapes_strides_scalars_and_attributes(tmp_path):
    source = ("uint i = thread_position_in_grid.x + threads_per_grid.y + grid_size.z + simdgroups_per_threadgroup;\n"
              "out[i % 4] = a[0] * s + b[a_shape[0] + a_strides[0] + b_ndim] + float(n);\n"
              "if (thread_index_in_quadgroup == 9) out2[0] = dispatch_threads_per_threadgroup.x;")
    arrays = [{"shape": [3, 9], "dtype": "float32"}, {"shape": [5], "dtype": "int32"}]
    scalars = [2.5, 7]
    want = mlx_generated(tmp_path, "probe", ["a", "b", "s", "n"], ["out", "out2"], source, "// hdr\n",
                         arrays, scalars, [("flag", True), ("W", 3)], ["float32", "uint32"])
    _, ours, _ = generate("probe", ["a", "b", "s", "n"], ["out", "out2"], source, "// hdr\n",
                          _infos(arrays, scalars), ["float32", "uint32"], [("flag", True), ("W", 3)])
    assert ours == want


# -- kernels vs twins ---------------------------------------------------------------------------------


def _np(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


def _close(got, want, rtol):
    got, want = _np(got), _np(want)
    err = np.abs(got - want).max()
    assert np.isfinite(got).all(), "kernel output has non-finite values (unwritten elements are NaN)"
    assert err <= rtol * np.abs(want).max() + 1e-6, err


def run_router(logits: mx.array, k: int, schedule: str):
    n, e = logits.shape
    launch = sources.router_launch(n, e, k)
    tmpl = [(a, b) for a, b in launch["template"]]
    idx, w = harness("router")(inputs=[to_host(logits)], template=tmpl, grid=launch["grid"],
                               threadgroup=launch["threadgroup"], output_shapes=[(n, k), (n, k)],
                               output_dtypes=["uint32", "float32"], schedule=schedule)
    return idx, w


@pytest.mark.parametrize("n,e", [(1, 8), (3, 32), (8, 128), (2, 40)])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_router_matches_twin(n, e, schedule):
    logits = mx.random.normal((n, e), key=mx.random.key(n * 1000 + e))
    idx, w = run_router(logits, 4, schedule)
    ti, tw = route_twin(logits, 4)
    np.testing.assert_array_equal(idx, np.array(ti))
    np.testing.assert_allclose(w, np.array(tw), rtol=1e-6, atol=1e-7)


def test_router_extreme_ties_and_infinities():
    rows = np.array([
        np.zeros(32),                                   # all tied: ids 0..3
        np.r_[np.full(16, -np.inf), np.ones(16)],       # ties after -inf
        np.r_[5.0, np.full(30, 2.0), 5.0],              # two maxima far apart, then ties
        np.r_[np.full(31, -np.inf), 1.0],               # only one finite
    ], dtype=np.float32)
    for dtype in (mx.float32, mx.bfloat16):
        logits = mx.array(rows).astype(dtype)
        idx, w = run_router(logits, 4, "reverse")
        ti, tw = route_twin(logits, 4)
        np.testing.assert_array_equal(idx, np.array(ti))
        np.testing.assert_allclose(w, np.array(tw), rtol=1e-6)
    assert idx[0].tolist() == [0, 1, 2, 3] and idx[2].tolist()[:2] == [0, 31]


def make_experts(e: int, h: int, i: int, seed: int, scale_bytes=(119, 124)):
    rng = np.random.default_rng(seed)

    def proj(out_dim, in_dim):
        return SimpleNamespace(
            weight=mx.array(rng.integers(0, 2**32, (e, out_dim, in_dim // 8), dtype=np.uint64).astype(np.uint32)),
            scales=mx.array(rng.integers(scale_bytes[0], scale_bytes[1] + 1, (e, out_dim, in_dim // 32)).astype(np.uint8)),
            bias=mx.array(rng.standard_normal((e, out_dim)).astype(np.float32) * 0.1),
        )

    return SimpleNamespace(gate_proj=proj(i, h), up_proj=proj(i, h), down_proj=proj(h, i), num_experts=e,
                           limit=7.0, alpha=1.702)


def run_up(x, idx, m, schedule):
    n, k = idx.shape
    h, i = x.shape[-1], m.gate_proj.weight.shape[1]
    launch = sources.experts_up_launch(n, k, h, i, m.limit, m.alpha)
    ins = [x, idx, m.gate_proj.weight, m.gate_proj.scales, m.gate_proj.bias, m.up_proj.weight, m.up_proj.scales,
           m.up_proj.bias]
    (act,) = harness("experts_up")(inputs=[to_host(a) for a in ins], template=launch["template"], grid=launch["grid"],
                                   threadgroup=launch["threadgroup"], output_shapes=[(n, k, i)],
                                   output_dtypes=["float32"], schedule=schedule)
    return mx.array(act)


def run_down(act, idx, w, m, out_dtype: str, schedule, source=None):
    n, k = idx.shape
    i, h = act.shape[-1], m.down_proj.weight.shape[1]
    launch = sources.experts_down_launch(n, k, h, i, out_dtype)
    s = spec("experts_down")
    kern = MSLKernel(s.name, s.input_names, s.output_names, source or s.source, s.header)
    ins = [act, idx, w, m.down_proj.weight, m.down_proj.scales, m.down_proj.bias]
    (y,) = kern(inputs=[to_host(a) for a in ins], template=launch["template"], grid=launch["grid"],
                threadgroup=launch["threadgroup"], output_shapes=[(n, h)], output_dtypes=[out_dtype], schedule=schedule)
    return mx.array(y.bits).view(mx.bfloat16) if isinstance(y, BF16Array) else mx.array(y)


# (tokens, k, experts, hidden H, intermediate I). Rows need not be multiples of the 8 rows a
# threadgroup computes (the up kernel's rows are I, the down kernel's H); reduction lengths must be
# multiples of 32 (and are not multiples of 512: 2880 like gpt-oss, 96, 160).
UP_CONFIGS = [(1, 4, 4, 64, 24), (3, 4, 5, 96, 64), (2, 2, 3, 2880, 16), (8, 4, 6, 160, 44)]
DOWN_CONFIGS = [(1, 4, 4, 40, 64), (3, 4, 5, 96, 96), (2, 2, 3, 12, 2880), (8, 4, 6, 160, 32)]
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


@pytest.mark.parametrize("n,k,e,h,i", UP_CONFIGS)
@pytest.mark.parametrize("xdtype", list(DTYPES))
def test_experts_up_matches_twin(n, k, e, h, i, xdtype):
    m = make_experts(e, h, i, seed=n * 7 + h)
    m.alpha = 1.25 if n == 3 else 1.702  # alpha is a config field: the kernel must take it, not assume 1.702
    x = mx.random.normal((n, h), key=mx.random.key(h + i)).astype(DTYPES[xdtype])
    idx = mx.array(np.random.default_rng(i).integers(0, e, (n, k)).astype(np.uint32))
    want = experts_up_twin(x, idx, m.gate_proj, m.up_proj, m.limit, m.alpha)
    for schedule in SCHEDULES:
        _close(run_up(x, idx, m, schedule), want, 1e-5)


@pytest.mark.parametrize("n,k,e,h,i", DOWN_CONFIGS)
@pytest.mark.parametrize("out_dtype", list(DTYPES))
def test_experts_down_matches_twin(n, k, e, h, i, out_dtype):
    m = SimpleNamespace(down_proj=make_experts(e, i, h, seed=h * 3 + i).gate_proj)  # [E, H, I/8] from a (h<-i) projection
    act = mx.random.normal((n, k, i), key=mx.random.key(h * i))
    idx = mx.array(np.random.default_rng(h).integers(0, e, (n, k)).astype(np.uint32))
    w = mx.softmax(mx.random.normal((n, k), key=mx.random.key(3)), axis=-1)
    want = experts_down_twin(act, idx, w, m.down_proj, DTYPES[out_dtype])
    for schedule in SCHEDULES:
        _close(run_down(act, idx, w, m, out_dtype, schedule), want, 1e-5 if out_dtype == "float32" else 1e-2)


def test_every_fp4_code_and_extreme_scale_bytes():
    e, h, i = 2, 64, 16
    m = make_experts(e, h, i, seed=5)
    codes = np.arange(16, dtype=np.uint32)
    words = np.zeros((e, i, h // 8), dtype=np.uint32)
    for t in range(8):  # each word cycles through all 16 codes across the row
        words |= ((codes[(np.arange(h // 8)[None, None, :] + t * 3 + np.arange(i)[None, :, None]) % 16]) << (4 * t))
    for p in (m.gate_proj, m.up_proj):
        p.weight = mx.array(words)
    for scale in (0, 254):
        for p in (m.gate_proj, m.up_proj):
            p.scales = mx.array(np.full((e, i, h // 32), scale, dtype=np.uint8))
        # keep products finite: 6 * 2^127 * 1e-30 ~ 1e9; 2^-127 makes tiny (subnormal) values
        mag = 1e-30 if scale == 254 else 1.0
        x = mx.array(np.random.default_rng(1).standard_normal((1, h)).astype(np.float32) * mag)
        idx = mx.array([[0, 1, 1, 0]], dtype=mx.uint32)
        want = experts_up_twin(x, idx, m.gate_proj, m.up_proj, m.limit, m.alpha)
        got = run_up(x, idx, m, "random")
        _close(got, want, 1e-5)


def test_harness_catches_a_missing_barrier():
    """Drop the barrier that protects the staged activations: some schedule must then disagree."""
    s = spec("experts_down").source
    first = s.index("    threadgroup_barrier(mem_flags::mem_threadgroup);\n")
    broken = s[:first] + s[first + len("    threadgroup_barrier(mem_flags::mem_threadgroup);\n"):]
    assert broken.count("threadgroup_barrier") == 1
    n, k, e, h, i = 1, 4, 4, 64, 64
    m = make_experts(e, h, i, seed=9)
    act = mx.random.normal((n, k, i), key=mx.random.key(0))
    idx = mx.array([[0, 1, 2, 3]], dtype=mx.uint32)
    w = mx.softmax(mx.random.normal((n, k), key=mx.random.key(1)), axis=-1)
    want = _np(experts_down_twin(act, idx, w, m.down_proj, mx.float32))
    good = [_np(run_down(act, idx, w, m, "float32", sch)) for sch in SCHEDULES]
    assert all(np.abs(g - want).max() < 1e-4 for g in good)
    bad = [_np(run_down(act, idx, w, m, "float32", sch, source=broken)) for sch in SCHEDULES]
    assert any(not np.isfinite(b).all() or np.abs(b - want).max() > 1e-3 for b in bad)


def test_harness_reports_divergent_collectives_and_partial_barriers():
    diverge = MSLKernel("d", ["a"], ["o"], "float v = a[0];\nif (thread_index_in_simdgroup < 16) { v = simd_sum(v); } else { v = simd_max(v); }\no[thread_position_in_grid.x] = v;")
    with pytest.raises(HarnessError, match="divergence"):
        diverge(inputs=[np.ones(32, np.float32)], grid=(32, 1, 1), threadgroup=(32, 1, 1), output_shapes=[(32,)],
                output_dtypes=["float32"])
    early = MSLKernel("b", ["a"], ["o"], "if (thread_index_in_threadgroup == 0) return;\nthreadgroup_barrier(mem_flags::mem_threadgroup);\no[thread_position_in_grid.x] = a[0];")
    with pytest.raises(HarnessError, match="barrier"):
        early(inputs=[np.ones(32, np.float32)], grid=(64, 1, 1), threadgroup=(64, 1, 1), output_shapes=[(64,)],
              output_dtypes=["float32"])


# -- the model with the real kernels (in the harness) and the self-test / fallback logic ------------


@pytest.fixture
def harness_kernels():
    # the C++ harness is slow by nature: the race is told the kernel wins, so the model really uses it
    return KernelSet(executor=HarnessExecutor("random"), mode="auto", race=lambda kernel, mlx: (0.1, 0.2))


def test_model_decode_through_the_kernels_matches_the_twins(tiny_runtime, harness_kernels):
    from gptoss_metal.metal_runtime import load

    model = load(tiny_runtime, dtype="float32", experts="kernels", kernels=harness_kernels)
    seq = [200006, 17360, 200008, 12194, 11, 2375]
    cache = model.make_cache()
    with_kernels = [_np(model(mx.array([[t]]), cache))[0, 0] for t in seq]
    assert harness_kernels.executor.calls > 0
    assert set(harness_kernels.status().values()) == {
        "passed, faster (0.100 ms vs MLX path 0.200 ms): in use"}
    model = load(tiny_runtime, dtype="float32", experts="twin")
    cache = model.make_cache()
    with_twins = [_np(model(mx.array([[t]]), cache))[0, 0] for t in seq]
    np.testing.assert_allclose(np.stack(with_kernels), np.stack(with_twins), atol=2e-5, rtol=0)


class _Broken:
    """An executor whose kernels compile but compute wrong numbers (or fail to compile)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.inner = HarnessExecutor()

    def __call__(self, spec_):
        if self.mode == "compile":
            raise RuntimeError("Unable to build metal library from source\nerror: use of undeclared identifier")
        run = self.inner(spec_)

        def wrong(**kw):
            return [o * 1.5 if o.dtype == mx.float32 else o for o in run(**kw)]

        return wrong


@pytest.mark.parametrize("failure", ["compile", "wrong"])
def test_failing_kernel_is_disabled_once_and_the_twin_runs(failure):
    ks = KernelSet(executor=_Broken(failure), mode="auto")
    m = make_experts(4, 64, 32, seed=3)
    x = mx.random.normal((2, 64), key=mx.random.key(4))
    idx = mx.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=mx.uint32)
    w = mx.softmax(mx.random.normal((2, 4), key=mx.random.key(5)), axis=-1)
    
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = ks.experts(x, idx, w, m, fallback=twin_experts)
        y2 = ks.experts(x, idx, w, m, fallback=twin_experts)
        logits = mx.random.normal((2, 16), key=mx.random.key(6))
        r = ks.route(logits, 4, fallback=route_twin)
    np.testing.assert_array_equal(_np(y1), _np(twin_experts(x, idx, w, m)))
    np.testing.assert_array_equal(_np(y2), _np(y1))
    np.testing.assert_array_equal(np.array(r[0]), np.array(route_twin(logits, 4)[0]))
    msgs = [str(c.message) for c in caught if "gptoss: Metal kernel" in str(c.message)]
    assert len(msgs) == 2  # one for the experts configuration, one for the router, never repeated
    status = ks.status()
    assert status["experts_up"].startswith("failed") and status["router"].startswith("failed")
    if failure == "compile":
        assert "Unable to build metal library" in status["experts_up"]
    else:
        assert "vs twin" in status["experts_up"] or "different experts" in status["router"]


def test_kernel_modes():
    off = KernelSet(executor=_Broken("compile"), mode="off")
    assert not off.active and all(v.startswith("skipped") for v in off.status().values())
    none = KernelSet(executor=None, mode="auto")
    assert not none.active and "no Metal" in none.status()["router"]
    forced = KernelSet(executor=_Broken("compile"), mode="on")
    with pytest.raises(RuntimeError, match="Unable to build"):
        forced.route(mx.zeros((1, 8)), 4, fallback=route_twin)
    with pytest.raises(ValueError):
        KernelSet(mode="sometimes")


def test_doctor_self_test_runs_every_kernel(harness_kernels):
    from gptoss_metal.metal_runtime.diagnostics import kernel_self_test

    status = kernel_self_test(harness_kernels)
    assert set(status) == {"router", "experts_up", "experts_down"}
    assert all(v.startswith("passed, faster") for v in status.values())


def test_doctor_cli_reports_without_metal(tiny_runtime):
    out = subprocess.run([sys.executable, "-m", "gptoss_metal.cli.main", "doctor", str(tiny_runtime), "--json"],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["backend"] == "cpu" and info["metal_available"] is False
    assert all(v.startswith("skipped: no Metal") for v in info["kernels"].values())
    assert info["vocab"].startswith("ok") and info["model"]["layout"] == "runtime" and info["model"]["fits"] is True


def _decode_inputs():
    m = make_experts(4, 64, 32, seed=3)
    x = mx.random.normal((1, 64), key=mx.random.key(4))
    idx = mx.array([[0, 1, 2, 3]], dtype=mx.uint32)
    w = mx.softmax(mx.random.normal((1, 4), key=mx.random.key(5)), axis=-1)
    return m, x, idx, w


def test_a_correct_but_slower_kernel_steps_aside_and_the_mlx_path_runs():
    ex = HarnessExecutor()
    ks = KernelSet(executor=ex, mode="auto", race=lambda kernel, mlx: (0.5, 0.2))
    m, x, idx, w = _decode_inputs()
    calls = []

    def mlx_path(*args):
        calls.append(1)
        return twin_experts(*args)

    y = ks.experts(x, idx, w, m, fallback=mlx_path)
    launched = ex.calls
    ks.experts(x, idx, w, m, fallback=mlx_path)
    assert ex.calls == launched  # decided once; the kernel is not launched again
    assert len(calls) == 2
    np.testing.assert_array_equal(_np(y), _np(twin_experts(x, idx, w, m)))
    assert ks.status()["experts_up"] == "passed, slower (0.500 ms vs MLX path 0.200 ms): MLX path in use"
    forced = KernelSet(executor=HarnessExecutor(), mode="on", race=lambda kernel, mlx: (0.5, 0.2))
    forced.experts(x, idx, w, m, fallback=mlx_path)
    assert forced.executor.calls > 0 and "kernels forced" in forced.status()["experts_up"]


def test_verdicts_are_kept_per_machine_and_mlx_version(tmp_path):
    from gptoss_metal.metal_runtime.kernels.verdicts import VerdictStore

    path = tmp_path / "verdicts.json"
    m, x, idx, w = _decode_inputs()
    races = []

    def race(kernel, mlx):
        races.append(1)
        return (0.1, 0.3)

    first = KernelSet(executor=HarnessExecutor(), store=VerdictStore(path, "M4 Max | mlx 0.32.4"), race=race)
    first.experts(x, idx, w, m, fallback=twin_experts)
    assert len(races) == 1 and path.exists()
    # a new process on the same machine: no self-test, no race, the stored verdict applies
    ex = HarnessExecutor()
    again = KernelSet(executor=ex, store=VerdictStore(path, "M4 Max | mlx 0.32.4"), race=race)
    again.experts(x, idx, w, m, fallback=twin_experts)
    assert len(races) == 1 and again.status()["experts_up"].startswith("passed, faster (0.100 ms")
    # another MLX version (or Mac) measures again; so does an explicit retime
    KernelSet(executor=HarnessExecutor(), store=VerdictStore(path, "M4 Max | mlx 0.33.0"), race=race).experts(
        x, idx, w, m, fallback=twin_experts)
    KernelSet(executor=HarnessExecutor(), store=VerdictStore(path, "M4 Max | mlx 0.32.4", retime=True),
              race=race).experts(x, idx, w, m, fallback=twin_experts)
    assert len(races) == 3
