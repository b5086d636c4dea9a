"""`gptoss doctor`: is this machine ready to run gpt-oss, and which fast paths are active?"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gptoss_metal.architecture import StoredBytes

from .errors import handle_user_errors
from .generate import memory_option
from .group import Ranks, run_command
from .launch import distributed_option, relaunch

SPLITS = (2, 4, 8)  # group sizes whose memory per rank doctor projects for a model


def _gb(n) -> str:
    return "unknown" if n is None else f"{n / 2**30:.1f} GiB"


def _size(n: int) -> str:
    return _gb(n) if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@click.command("doctor")
@click.argument("model_path", required=False, type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@click.option("--retime", is_flag=True, help="Check and race the Metal kernels again instead of using the "
                                             "verdicts stored for this machine and MLX version.")
@memory_option
@distributed_option
@handle_user_errors
def doctor_cmd(model_path: str | None, as_json: bool, retime: bool, max_memory: int | None,
               hostfile: str | None) -> None:
    """Platform, MLX backend, Metal kernels (self-tested and raced against the MLX path), vocabulary,
    memory vs MODEL_PATH (does it fit, and if not what --max-memory does and what it costs); under
    mlx.launch, the group: size, backend, each rank's experts and memory."""
    relaunch(hostfile)
    run_command(lambda ranks: _doctor(ranks, model_path, as_json, retime, max_memory))


def _group_info(ranks: Ranks | None, model_path: str | None) -> dict:
    """The group this process belongs to (every rank loads its share of MODEL_PATH to report it)."""
    from gptoss_metal.metal_runtime.distributed import gather_json, load_expert_parallel, rank_report

    if ranks is None:
        return {"launched": False}
    g = ranks.group
    mine = {"rank": g.rank, "host": __import__("platform").node()}
    if model_path:
        with ranks.guard.deadline("loading this rank's share of the model", 1800):
            mine = rank_report(load_expert_parallel(model_path, g), g)
    with ranks.guard.deadline("gathering the ranks' reports"):
        reports = gather_json(mine, g)
    return {"launched": True, "size": g.size, "backend": g.backend, "ranks": reports}


def _split_projection(summary) -> list[dict]:
    """Memory per rank if MODEL_PATH were spread over N ranks: the dense weights plus 1/N of the experts."""
    stored = StoredBytes(experts=summary.expert_bytes, dense=summary.tensor_bytes - summary.expert_bytes)
    return [{"ranks": n, "bytes_per_rank": max(summary.arch.rank_bytes(n, stored))}
            for n in SPLITS if n <= summary.arch.num_local_experts]


def _memory_plan(summary, model_path: str, max_memory: int | None) -> dict:
    """Whether the model fits in what it may use, and if not what the expert cache will hold and cost."""
    from gptoss_metal.metal_runtime.bench import APPLE_SSD_READ_GBS, ssd_bound_tps
    from gptoss_metal.metal_runtime.loading import memory_plan
    from gptoss_metal.metal_runtime.memory import default_budget

    from gptoss_metal.metal_runtime.errors import ModelLoadError

    budget, source = (max_memory, "--max-memory") if max_memory is not None else default_budget(summary.arch)
    try:
        plan = memory_plan(model_path, "bfloat16", budget)
    except ModelLoadError as e:  # too little memory even with the experts cached: say so, do not fail
        return {"budget": budget, "budget_source": source, "fits": False, "error": str(e)}
    disk = plan.expected_disk_bytes_per_token()
    return {"budget": budget, "budget_source": source, "fits": plan.fits, "whole_bytes": plan.whole,
            "resident_bytes": plan.resident, "dense_bytes": plan.dense, "embedding_bytes": plan.embedding,
            "slots": plan.slots, "experts": plan.num_experts, "segment": plan.segment,
            "disk_bytes_per_token": disk, "ssd_gbs": APPLE_SSD_READ_GBS, "ssd_bound_tps": ssd_bound_tps(disk)}


def _doctor(ranks: Ranks | None, model_path: str | None, as_json: bool, retime: bool,
            max_memory: int | None = None) -> None:
    import os

    from gptoss_metal.harmony_io import HarmonyIOError, vocab_status
    from gptoss_metal.metal_runtime.diagnostics import diagnostics

    if retime:
        os.environ["GPTOSS_KERNEL_RETIME"] = "1"

    info = diagnostics()
    try:
        vs = vocab_status()
        info["vocab"] = f"ok ({vs.source}: {vs.path})" if vs.path else f"ok ({vs.source})"
    except HarmonyIOError as e:
        info["vocab"] = f"MISSING: {e}"
    if model_path:
        from gptoss_metal.converters import inspect_checkpoint

        s = inspect_checkpoint(model_path)
        info["model"] = {"path": str(s.directory), "layout": s.layout, "tensor_bytes": s.tensor_bytes,
                         "bytes_per_decoded_token": s.bytes_per_token, "expert_bytes": s.expert_bytes,
                         "split": _split_projection(s)}
        if s.layout == "runtime":
            info["model"]["memory"] = _memory_plan(s, model_path, max_memory)
            info["model"]["fits"] = info["model"]["memory"]["fits"]
        else:
            info["model"]["fits"] = None  # the loader reads converted folders only
    try:
        from gptoss_metal.assistant.tools.python_tool import PythonTool

        tool = PythonTool()
        try:
            info["python_tool"] = tool.describe()  # starts the interpreter: what applies is what it reports
            info["python_tool_containment"] = tool.containment
        finally:
            tool.close()
    except Exception as e:  # noqa: BLE001 - diagnostics must not die on an optional feature
        info["python_tool"] = [f"unavailable: {e}"]
    info["distributed"] = _group_info(ranks, model_path)
    if ranks is not None and not ranks.leader:
        return  # rank 0 speaks for the group
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    t = Table(title="gptoss doctor", show_header=False)
    t.add_row("platform", f"{info['platform']}, Python {info['python']}")
    t.add_row("MLX", f"{info['mlx']} ({info['backend']} backend; Metal {'yes' if info['metal_available'] else 'no'})")
    for name, status in info["kernels"].items():
        style = "green" if status == "passed" else "red" if status.startswith("failed") else "yellow"
        t.add_row(f"kernel {name}", f"[{style}]{status}[/]")
    t.add_row("harmony vocab", info["vocab"])
    t.add_row("memory", _gb(info["memory_bytes"]))
    if "model" in info:
        m = info["model"]
        t.add_row("model", f"{m['path']} ({m['layout']}): {_gb(m['tensor_bytes'])}; "
                           f"{m['bytes_per_decoded_token'] / 1e9:.2f} GB read per decoded token")
        t.add_row("fits?", _fit_text(m))
    t.add_row("python tool", "\n".join(escape(line) for line in info["python_tool"]))
    _group_rows(t, info)
    Console().print(t)


def _fit_text(m: dict) -> str:
    if m["fits"] is None:
        return "convert it first (`gptoss convert`): the memory plan is for converted folders"
    p = m["memory"]
    if "error" in p:
        return f"[red]no, not even with its experts cached[/]: {escape(p['error'])}"
    allowed = f"{_gb(p['budget'])} allowed ({escape(p['budget_source'])})"
    if p["fits"]:
        return f"[green]yes[/]: {_gb(p['whole_bytes'])} whole in {allowed}"
    ceiling = f"at most ~{p['ssd_bound_tps']:.0f} tok/s" if p["disk_bytes_per_token"] else "no disk reads"
    return (f"[yellow]no, runs with its experts cached[/]: {_gb(p['whole_bytes'])} whole, {allowed}. Resident: "
            f"{_gb(p['dense_bytes'])} of dense weights at full precision (the {_gb(p['embedding_bytes'])} embedding "
            f"table read on demand) + {p['slots']} of {p['experts']} experts per layer, {_gb(p['resident_bytes'])} in "
            f"all. Cost: ~{p['disk_bytes_per_token'] / 1e6:.0f} MB read from disk per decoded token if routing were "
            f"uniform (fewer where experts repeat), so {ceiling} from a {p['ssd_gbs']} GB/s SSD (Apple's published "
            "rate); the same tokens as in memory. Another budget: --max-memory GB")


def _group_rows(t: Table, info: dict) -> None:
    d = info["distributed"]
    if not d["launched"]:
        t.add_row("distributed", "one process (start several with `mlx.launch --hostfile hosts.json -- gptoss ...` "
                                 "or --distributed hosts.json)")
        if "model" in info and info["model"]["split"]:
            t.add_row("spread over Macs", ", ".join(f"{p['ranks']} ranks: {_size(p['bytes_per_rank'])} each"
                                                   for p in info["model"]["split"]))
        return
    t.add_row("distributed", f"{d['size']} ranks, {d['backend']} backend (expert-parallel)")
    for r in d["ranks"]:
        text = f"{r['host']}"
        if "experts" in r:
            first, last = r["experts"]
            text += (f": experts {first}-{last - 1} ({last - first}), {_size(r['expert_bytes'])} of experts + "
                     f"{_size(r['dense_bytes'])} dense, peak resident {_size(r['peak_rss_bytes'])}")
        t.add_row(f"rank {r['rank']}", text)


def register(group: click.Group) -> None:
    group.add_command(doctor_cmd)
