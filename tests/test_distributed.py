"""Several ranks on this machine, started by MLX's own launcher (`mlx.launch`, ring backend on 127.0.0.1).

Each test starts real processes: the model spread expert-parallel over 2 or 4 ranks must compute what
one process computes (float32 logits within 1e-5, bf16 bit for bit with float32 partial sums, greedy
tokens identical), hold 1/N of the experts, keep every rank's cache identical through the engine, run
`gptoss generate` end to end, and end the whole group -- with one message, in bounded time -- when a
rank is killed, raises or hangs. tests/dist_worker.py is what the ranks run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gptoss_metal.architecture import Architecture
from gptoss_metal.converters import convert, synth

HERE = Path(__file__).parent
WORKER = HERE / "dist_worker.py"
LAUNCH = Path(sys.executable).with_name("mlx.launch")
GPTOSS = Path(sys.executable).with_name("gptoss")
NOISE = ("failed with errno", "Failing pending", "closed by the peer", "Too many send/recv")  # MLX ring's chatter

pytestmark = pytest.mark.skipif(not LAUNCH.exists(), reason="mlx.launch is not installed")


def free_port_block(n: int) -> int:
    """A first port with the next n ports free too (mlx.launch's ring listens on port, port+1, ...)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def launch(n: int, *cmd: str, timeout: float = 120, env: dict | None = None, **popen) -> subprocess.Popen:
    """Start `cmd` on n local ranks with the ring backend (in its own session, so it can be signalled whole)."""
    envs = []
    for k, v in (env or {}).items():
        envs += ["--env", f"{k}={v}"]
    args = [str(LAUNCH), "-n", str(n), "--backend", "ring", "-p", str(free_port_block(n)), *envs, "--", *cmd]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, start_new_session=True, cwd=HERE, **popen)


def finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the group did not end within {timeout} s:\n{out}")
    return without_noise(out)


def without_noise(out: str) -> str:
    """The output without MLX ring's chatter. A rank's chatter may end without a newline when the
    launcher writes its own warning, so a noisy line keeps any launcher warning it carries."""
    kept = []
    for line in out.splitlines():
        if any(n in line for n in NOISE):
            line = line[line.index("[WARN]"):] if "[WARN]" in line else ""
        if line:
            kept.append(line)
    return "\n".join(kept)


def run_ranks(n: int, *args: str, env: dict | None = None, timeout: float = 180) -> str:
    out = finish(launch(n, sys.executable, str(WORKER), *args, env={"GPTOSS_GROUP_TIMEOUT": "30", **(env or {})}),
                 timeout)
    assert "gptoss:" not in out and "WARN" not in out, out
    return out


def worker_alone(*args: str) -> None:
    subprocess.run([sys.executable, str(WORKER), *args], check=True, cwd=HERE, timeout=300)


# -- the model ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tiny_runtime, tmp_path_factory) -> Path:
    """One process's logits and generations on the tiny model (float32 and bf16)."""
    out = tmp_path_factory.mktemp("ref")
    worker_alone("model", str(tiny_runtime), str(out), "float32,bfloat16")
    return out


def _compare(ref: Path, got: Path, dtype: str, n: int) -> None:
    want = np.load(ref / f"logits-{dtype}.npz")
    have = np.load(got / f"logits-{dtype}.npz")
    ref_tokens = json.loads((ref / "model-rank0.json").read_text())[dtype]
    ranks = json.loads((got / "model-rank0.json").read_text())["ranks"]
    assert len(ranks) == n
    for key in ("full", "steps"):
        diff = np.abs(have[key] - want[key]).max()
        if dtype == "float32":
            assert diff <= 1e-5, f"{key}: {diff}"
        else:  # float32 partial sums: the bf16 result rounds to what one process computes
            assert diff <= np.abs(want[key]).max() * 2**-8, f"{key}: {diff}"
    for r in ranks:  # every rank fed the same tokens as one process generates
        assert r[dtype]["greedy"] == ref_tokens["greedy"]
        if ref_tokens["sampled"] is not None and r[dtype]["sampled"] is not None:
            assert r[dtype]["sampled"] == ref_tokens["sampled"]
    slices = [tuple(r[dtype]["slice"]) for r in ranks]
    assert slices == [(8 * i // n, 8 * (i + 1) // n) for i in range(n)]


def test_two_ranks_compute_what_one_process_computes(tiny_runtime, reference, tmp_path):
    run_ranks(2, "model", str(tiny_runtime), str(tmp_path), "float32,bfloat16")
    _compare(reference, tmp_path, "float32", 2)
    _compare(reference, tmp_path, "bfloat16", 2)
    bf16 = np.load(tmp_path / "logits-bfloat16.npz")["full"]
    assert np.array_equal(bf16, np.load(reference / "logits-bfloat16.npz")["full"])  # bit for bit, here


@pytest.mark.slow
def test_four_ranks_compute_what_one_process_computes(tiny_runtime, reference, tmp_path):
    run_ranks(4, "model", str(tiny_runtime), str(tmp_path), "float32", timeout=300)
    _compare(reference, tmp_path, "float32", 4)


# -- memory -------------------------------------------------------------------------------------------

WIDE = Architecture(num_hidden_layers=4, num_local_experts=16, num_experts_per_tok=4, vocab_size=2048,
                    hidden_size=1024, intermediate_size=1024, head_dim=64, num_attention_heads=8,
                    num_key_value_heads=2, sliding_window=16)


@pytest.fixture(scope="module")
def wide_runtime(tmp_path_factory) -> Path:
    """Experts are ~93% of this model (the tiny one is mostly its 201k-token embedding)."""
    root = tmp_path_factory.mktemp("wide")
    return convert(synth(root / "hf", arch=WIDE, fmt="hf", seed=3), root / "runtime").destination


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS")
def test_a_rank_holds_its_share_of_the_experts_and_no_more(wide_runtime, tmp_path):
    alone, spread = tmp_path / "alone", tmp_path / "spread"
    worker_alone("memory", str(wide_runtime), str(alone))
    run_ranks(2, "memory", str(wide_runtime), str(spread))
    one = json.loads((alone / "memory-rank0.json").read_text())
    ranks = [json.loads((spread / f"memory-rank{r}.json").read_text()) for r in range(2)]
    total = one["expert_bytes"]
    share = total // 2
    for r in ranks:
        assert r["expert_bytes"] == share  # exactly its 8 of 16 experts
        assert r["dense_bytes"] == one["dense_bytes"]  # the dense weights are replicated
        # resident memory (a sanity check: allocator noise aside) is its share plus the dense weights
        assert r["rss_delta"] < one["rss_delta"] - 0.35 * total, (r, one)
        assert r["rss_delta"] < r["dense_bytes"] + share + 0.15 * total, (r, one)
    assert total > 0.8 * (one["expert_bytes"] + one["dense_bytes"])  # a model where experts dominate


# -- the engine ---------------------------------------------------------------------------------------


def test_engine_ranks_run_the_same_passes_and_keep_identical_caches(tiny_runtime, tmp_path):
    alone, spread = tmp_path / "alone", tmp_path / "spread"
    worker_alone("engine", str(tiny_runtime), str(alone))
    run_ranks(2, "engine", str(tiny_runtime), str(spread))
    want = json.loads((alone / "engine-outputs.json").read_text())
    got = json.loads((spread / "engine-outputs.json").read_text())
    assert got == want  # tokens delivered (a caller's stop after 5 included), prompt reuse, prefill counts
    caches = [json.loads((spread / f"engine-rank{r}.json").read_text()) for r in range(2)]
    assert caches[0] == caches[1]
    assert caches[0]["offset"] == len(caches[0]["tokens"]) > 0


def test_the_python_tool_runs_on_rank_0_while_every_rank_runs_the_turn(tmp_path):
    run_ranks(2, "tool", "-", str(tmp_path))
    turn = json.loads((tmp_path / "tool.json").read_text())
    assert turn == {"results": ["42", "43"], "answer": "It is 43.", "steps": 3}
    caches = [json.loads((tmp_path / f"tool-rank{r}.json").read_text())["tokens"] for r in range(2)]
    assert caches[0] == caches[1] and len(caches[0]) > 0


def test_gptoss_generate_under_mlx_launch_answers_like_one_process(tiny_runtime):
    cmd = [str(GPTOSS), "generate", str(tiny_runtime), "-p", "Say hello.", "--max-tokens", "24",
           "--temperature", "0", "--effort", "low"]
    alone = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    out = finish(launch(2, *cmd))
    assert alone.stdout.strip() and alone.stdout.strip() in out
    assert "gptoss:" not in out and "WARN" not in out and "Traceback" not in out, out


# -- failures -----------------------------------------------------------------------------------------


def _gptoss_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("gptoss:")]


def _exit_codes(out: str) -> dict[int, int]:
    """Ranks that mlx.launch saw exit non-zero (its own warning lines)."""
    return {int(r): int(c) for r, c in re.findall(r"Node with rank (\d+) exited with code (-?\d+)", out)}


def test_a_rank_that_raises_ends_the_group_with_its_message(tiny_runtime, tmp_path):
    t0 = time.monotonic()
    proc = launch(2, sys.executable, str(WORKER), "fail", str(tiny_runtime), str(tmp_path), "raise:1:5",
                  env={"GPTOSS_GROUP_TIMEOUT": "10"})
    out = finish(proc, timeout=60)
    assert time.monotonic() - t0 < 45
    assert _gptoss_lines(out) == ["gptoss: [rank 1/2] error: RuntimeError: injected failure on rank 1"], out
    codes = _exit_codes(out)
    assert codes.get(1) == 1 and codes.get(0, 0) != 0, out  # rank 0 stopped too (by mlx.launch or itself)


def test_a_killed_rank_ends_the_group(tiny_runtime, tmp_path):
    """SIGKILL to a follower while rank 0 runs requests (and waits between them, on the idle heartbeat)."""
    proc = launch(2, sys.executable, str(WORKER), "fail", str(tiny_runtime), str(tmp_path), "none:9:0",
                  env={"GPTOSS_GROUP_TIMEOUT": "10", "DIST_REQUESTS": "100", "DIST_PAUSE": "0.3"})
    seen = Lines(proc)
    seen.wait_for("rank 1 ready")
    follower = _wait_for_rank(proc.pid, 1)
    seen.wait_for("rank 0 finished request 2")  # the group is serving (and idles between requests)
    t0 = time.monotonic()
    os.kill(follower, signal.SIGKILL)
    out = seen.finish(timeout=60)
    assert time.monotonic() - t0 < 20, out  # the 10 s watchdog at most, plus the launcher's own steps
    assert _exit_codes(out).get(1) == -9, out
    assert len(_gptoss_lines(out)) <= 1, out  # mlx.launch names the killed rank; at most rank 0 adds a line
    assert "Traceback" not in out, out


class Lines:
    """A launched group's output, read as it comes."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self._reader = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self._reader.start()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        t0 = time.monotonic()
        while not any(text in line for line in self.lines):
            if time.monotonic() - t0 > timeout or self.proc.poll() is not None:
                raise AssertionError(f"never saw {text!r}:\n{''.join(self.lines)}")
            time.sleep(0.05)

    def finish(self, timeout: float) -> str:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"the group did not end within {timeout} s:\n{''.join(self.lines)}")
        self._reader.join(5)
        return without_noise("".join(self.lines))


def _wait_for_rank(launcher: int, rank: int, timeout: float = 60) -> int:
    """The pid of rank `rank` among the launcher's children (they carry MLX_RANK in their environment)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for pid in subprocess.run(["pgrep", "-P", str(launcher)], capture_output=True, text=True).stdout.split():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"MLX_RANK={rank}".encode() in environ:
                return int(pid)
        time.sleep(0.1)
    raise AssertionError("the rank did not start")


def test_ctrl_c_with_distributed_ends_every_rank_with_one_message(tiny_runtime, tmp_path):
    """`gptoss chat MODEL --distributed hosts.json`: mlx.launch runs in its own session and Ctrl-C reaches
    the ranks, not the launcher (which would print a traceback over the message)."""
    if any(_in_use(p) for p in (32323, 32324)):
        pytest.skip("mlx.launch's default ports are in use")
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps({"backend": "ring", "hosts": [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2}))
    proc = subprocess.Popen([str(GPTOSS), "chat", str(tiny_runtime), "--distributed", str(hosts)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=tmp_path)
    seen = Lines(proc)
    seen.wait_for("gptoss chat")  # rank 0 has loaded its share and waits for input
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    out = seen.finish(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - t0 < 15, out
    assert _gptoss_lines(out) == ["gptoss: [rank 0/2] interrupted"], out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out


def _in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed run's TIME_WAIT is no conflict
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
