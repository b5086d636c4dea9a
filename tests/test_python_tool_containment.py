"""The python tool's containment on this machine: what it may read, the processes it may start, and
that every one of them dies (call end, timeout, reset, close, the program being killed).

Each test states the mechanism it relies on and skips, saying why, where the kernel lacks it. The
fork bombs run in a separate driver process (tests/sandbox_driver.py) in its own session, under a
wall-clock timeout and prlimit, and bound themselves (512 processes at most), so a broken
containment cannot hurt the machine.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from gptoss_metal.assistant.tools import processes
from gptoss_metal.assistant.tools.python_tool import PythonTool, PythonToolLimits, remove_stale_folders
from sandbox_driver import marked  # live processes whose command line contains a text

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux containment (macOS: see test_sandbox_profile.py)")

TESTS = Path(__file__).parent
TOOLS = TESTS.parent / "assistant" / "tools"
SYSTEM_PYTHON = "/usr/bin/python3"


def landlock_abi(tool: PythonTool) -> int:
    return (tool.containment.get("landlock") or {}).get("abi", 0)


def needs_landlock(tool: PythonTool) -> None:
    if not landlock_abi(tool):
        pytest.skip(f"no Landlock in this kernel: {tool.containment.get('landlock')}")


def needs_pid_namespace(tool: PythonTool) -> None:
    if not (tool.containment.get("namespaces") or {}).get("pid"):
        pytest.skip(f"no unprivileged pid namespace here: {tool.containment.get('namespaces')}")


def in_pid_namespace(ns: str) -> list[int]:
    """Live processes of the pid namespace `ns` (as readlink(/proc/PID/ns/pid) names it)."""
    out = []
    for pid in processes.process_table(live_only=True):
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") == ns:
                out.append(pid)
        except OSError:
            continue
    return out


def eventually_empty(probe, seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        left = probe()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    """A home folder with a secret, readable by everyone as far as file permissions go: only the
    sandbox can stop the code from reading it."""
    home = tmp_path / "home" / "alice"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    (home / "notes.txt").write_text("the secret is 42")
    (home / "shared").mkdir()
    (home / "shared" / "data.csv").write_text("a,b\n1,2\n")
    for p in [tmp_path, tmp_path / "home", *home.rglob("*"), home]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def tool():
    t = PythonTool(PythonToolLimits(timeout_s=5.0, max_output=4000))
    yield t
    t.close()


# -- reads -----------------------------------------------------------------------------------


def test_the_home_folder_and_user_files_are_unreadable(fake_home):
    tool = PythonTool(PythonToolLimits(timeout_s=10.0))
    try:
        assert tool.run("1").status == "ok"
        needs_landlock(tool)
        for code in (f"open({str(fake_home / 'notes.txt')!r}).read()",
                     f"open({str(fake_home / '.ssh' / 'id_ed25519')!r}).read()",
                     f"import os; os.listdir({str(fake_home)!r})",
                     "open('/etc/passwd').read()", "open('/etc/group').read()",
                     "import os; os.listdir(os.path.expanduser('/root'))"):
            out = tool.run(code)
            assert out.status == "error" and "PermissionError" in out.text, (code, out.text)
            assert "42" not in out.text and "PRIVATE" not in out.text
        # programs it starts are held to the same rules
        out = tool.run(f"import subprocess; print(subprocess.run(['cat', {str(fake_home / 'notes.txt')!r}], "
                       "capture_output=True, text=True))")
        assert "Permission denied" in out.text and "secret" not in out.text
        # what it needs still works: its folder, the standard library, packages, programs
        assert tool.run("open('mine.txt', 'w').write('ok'); open('mine.txt').read()").text.strip() == "'ok'"
        assert tool.run("import json, csv, sqlite3, decimal; json.dumps([1])").text.strip() == "'[1]'"
        assert tool.run("import numpy; int(numpy.arange(4).sum())").text.strip() == "6"
        assert "hello" in tool.run("import subprocess; subprocess.run(['echo', 'hello'])").text
    finally:
        tool.close()


def test_without_landlock_the_same_read_succeeds(fake_home):
    """The control that shows the test above can fail: the secret is readable as far as the file
    system goes, and only Landlock stops the code."""
    tool = PythonTool(PythonToolLimits(timeout_s=10.0), landlock=False)
    try:
        out = tool.run(f"open({str(fake_home / 'notes.txt')!r}).read()")
        assert out.status == "ok" and "the secret is 42" in out.text
        assert tool.containment["landlock"]["abi"] == 0
    finally:
        tool.close()


def test_opt_in_read_path_is_readable_but_not_writable(fake_home):
    shared = fake_home / "shared"
    tool = PythonTool(PythonToolLimits(timeout_s=10.0), read_paths=[shared])
    try:
        out = tool.run(f"open({str(shared / 'data.csv')!r}).read()")
        needs_landlock(tool)
        assert out.status == "ok" and "1,2" in out.text
        out = tool.run(f"open({str(shared / 'new.txt')!r}, 'w').write('x')")
        assert out.status == "error" and "PermissionError" in out.text and not (shared / "new.txt").exists()
        out = tool.run(f"open({str(fake_home / 'notes.txt')!r}).read()")  # the rest of home stays closed
        assert out.status == "error" and "42" not in out.text
        assert any(str(shared) in line for line in tool.describe())
    finally:
        tool.close()


def test_an_opt_in_path_must_exist(tmp_path):
    with pytest.raises(ValueError, match="no such file or folder"):
        PythonTool(read_paths=[tmp_path / "missing"])


def test_the_environment_is_fresh(tool, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    tool.close()  # the next call starts an interpreter that sees the variable above, if anything leaks
    out = tool.run("import os; sorted(os.environ)")
    assert "OPENAI_API_KEY" not in out.text
    assert "sk-should-not-leak" not in tool.run("import os; str(os.environ)").text
    assert tool.run("import os; os.environ['HOME'] == os.getcwd()").text.strip() == "True"


# -- processes -------------------------------------------------------------------------------

DAEMONS = """
import os, subprocess, time
subprocess.Popen(['sleep', '{tag}'])            # an ordinary child
if os.fork() == 0:                               # a daemon: new session, parent exits
    os.setsid()
    if os.fork() == 0:
        os.execvp('sleep', ['sleep', '{tag}'])
    os._exit(0)
time.sleep(0.3)
print('started')
"""


@pytest.mark.parametrize("namespaces", [True, False], ids=["pid-namespace", "process-tree"])
def test_processes_left_running_die_when_the_call_ends(namespaces):
    tag = f"{os.getpid() % 1000 + 311}.{int(time.time() * 1000) % 997}"
    tool = PythonTool(PythonToolLimits(timeout_s=10.0), namespaces=namespaces)
    try:
        out = tool.run(DAEMONS.format(tag=tag))
        assert out.text.strip() == "started"
        assert tool.containment["sweep"] == ("pid namespace" if namespaces else "process tree")
        if namespaces:
            needs_pid_namespace(tool)
        assert eventually_empty(lambda: marked(f"sleep\0{tag}")) == []
        assert tool.run("'still here'").text.strip() == "'still here'"  # the interpreter itself lives on
    finally:
        tool.close()


@pytest.mark.parametrize("namespaces", [True, False], ids=["pid-namespace", "process-tree"])
def test_timeout_reset_and_close_end_every_process(namespaces):
    tag = f"{os.getpid() % 1000 + 411}.{int(time.time() * 1000) % 997}"
    tool = PythonTool(PythonToolLimits(timeout_s=3.0), namespaces=namespaces)
    try:
        # a timeout while the daemons run
        out = tool.run(DAEMONS.format(tag=tag) + "\nwhile True:\n    pass\n")
        assert out.status == "timeout"
        assert eventually_empty(lambda: marked(f"sleep\0{tag}")) == []
        # reset and close: the interpreter and its helpers (supervisor, init) are gone, nothing lingers
        for end in (tool.reset, tool.close):
            tool.run("x = 1")
            work = str(tool.work_dir)
            ns = os.readlink(f"/proc/{tool.init_pid}/ns/pid") if tool.init_pid else None
            assert marked(work)
            end()
            assert eventually_empty(lambda: marked(work)) == []
            if ns:
                assert eventually_empty(lambda: in_pid_namespace(ns)) == []
        assert tool.run("'x' in globals()").text.strip() == "False"  # after close: a fresh interpreter
    finally:
        tool.close()


LIFELINE = """
import sys
sys.path[:0] = {paths!r}
from gptoss_metal.assistant.tools.python_tool import PythonTool
t = PythonTool(namespaces={ns})
t.run("open('scratch.txt', 'w').write('x')")
print(t.work_dir, flush=True)
t.run("import subprocess\\nsubprocess.Popen(['sleep', '{tag}'])\\nwhile True: pass")
"""


@pytest.mark.parametrize("namespaces", [True, False], ids=["pid-namespace", "process-tree"])
def test_everything_dies_when_the_program_using_the_tool_is_killed(namespaces):
    tag = f"{os.getpid() % 1000 + 511}.{int(time.time() * 1000) % 997}"
    code = LIFELINE.format(paths=sys.path, ns=namespaces, tag=tag)
    prog = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        work = prog.stdout.readline().strip()
        assert work
        deadline = time.monotonic() + 10
        while not marked(f"sleep\0{tag}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marked(f"sleep\0{tag}"), "the code did not start"
        prog.kill()  # SIGKILL: no cleanup code runs in the program
        prog.wait()
        assert eventually_empty(lambda: marked(f"sleep\0{tag}")) == []
        assert eventually_empty(lambda: marked(work)) == []
        if namespaces:  # the supervisor, outside the sandbox, also removed the tool's folder
            assert eventually_empty(lambda: [work] if os.path.exists(work) else []) == []
        else:  # the interpreter could only empty it; the next tool started removes it
            assert eventually_empty(lambda: os.listdir(work)) == []
            assert Path(work).parent in remove_stale_folders() and not os.path.exists(work)
    finally:
        if prog.poll() is None:
            prog.kill()
        for pid in marked(f"sleep\0{tag}"):
            os.kill(pid, signal.SIGKILL)


def _run_driver(cmd: list[str], env: dict | None = None, timeout: float = 90.0) -> dict:
    """The driver in its own session; whatever happens, that session is killed at the end."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_a_fork_bomb_is_bounded_and_leaves_nothing():
    """As this test runs (root in CI containers, whom RLIMIT_NPROC does not bind), the bound is the
    sandbox pid namespace's own pid_max (kernel >= 6.14): ~300 processes. The bomb asks for 512."""
    prlimit = ["prlimit", "--nproc=4096:4096", "--"] if shutil.which("prlimit") else []
    res = _run_driver(prlimit + [sys.executable, str(TESTS / "sandbox_driver.py"),
                                 json.dumps({"timeout_s": 4.0})])
    c = res["containment"]
    if not c.get("pid_max"):
        pytest.skip(f"no per-namespace pid_max here (kernel < 6.14, or no pid namespace): {c.get('namespaces')}")
    assert res["status"] == "timeout"  # the interpreter sleeps; the call ends at the timeout
    assert 100 <= res["peak"] <= c["pid_max"] - 1  # it forked a lot, and no more than the namespace holds
    assert res["left_after_call"] == [] and res["left_after_close"] == []
    assert res["after"].strip() == "2"  # and the tool works again


@pytest.fixture
def public_tmp():
    """A folder user nobody can read (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="gptoss-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _unprivileged_driver_cmd(tmp_path: Path, args: dict) -> list[str]:
    """The driver as user nobody, with the system's python3 and a stub package holding only the tools."""
    if os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("needs root (to become nobody), setpriv and /usr/bin/python3")
    pkg = tmp_path / "stub" / "gptoss_metal"
    (pkg / "assistant").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "assistant" / "__init__.py").write_text("")
    (pkg / "assistant" / "tools").symlink_to(TOOLS)
    shutil.copy(TESTS / "sandbox_driver.py", tmp_path / "stub" / "sandbox_driver.py")
    for p in [tmp_path, *tmp_path.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSTEM_PYTHON, "-c",
                            f"open({str(TOOLS / 'sandbox_child.py')!r}).read()"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user nobody cannot read the package here")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "prlimit", "--nproc=256:256", "--",
            "env", f"PYTHONPATH={tmp_path / 'stub'}", "HOME=/nonexistent", SYSTEM_PYTHON,
            str(tmp_path / "stub" / "sandbox_driver.py"), json.dumps(args)]


@pytest.mark.parametrize("namespaces", [True, False], ids=["user-namespace", "user-count"])
def test_a_fork_bomb_of_an_unprivileged_user_stops_at_max_processes(public_tmp, namespaces):
    """The usual case: a normal user. RLIMIT_NPROC counts the sandbox's own user namespace (or, without
    namespaces, the user's processes plus the allowance)."""
    res = _run_driver(_unprivileged_driver_cmd(public_tmp, {"max_processes": 16, "namespaces": namespaces,
                                                          "timeout_s": 4.0}))
    c = res["containment"]
    assert res["uid"] == 65534 and not c["root"]
    if namespaces:
        if c["limits"]["process_count"] != "sandbox":
            pytest.skip(f"no unprivileged user namespace here: {c['namespaces']}")
        assert c["namespaces"]["pid"]
        # the supervisor is outside the sample (it is not its own descendant) but counts: 1 + peak <= 16
        assert 8 <= res["peak"] <= 15
    else:
        assert c["limits"]["process_count"] == "user"
        assert 8 <= res["peak"] <= c["limits"]["processes"]
    assert res["status"] == "timeout"
    assert res["left_after_call"] == [] and res["left_after_close"] == []
    assert res["after"].strip() == "2"


def test_containment_is_described_in_words(tool):
    lines = tool.describe()
    assert [line.split(":")[0] for line in lines] == ["files", "network", "processes", "limits"]
    text = "\n".join(lines)
    assert "{" not in text and "True" not in text  # words, not a dict
    if landlock_abi(tool):
        assert f"Landlock ABI {landlock_abi(tool)}" in text and "unreadable" in text
    if (tool.containment.get("namespaces") or {}).get("pid"):
        assert "pid namespace" in text
    assert "5 s per call" in text


def test_describe_says_what_is_missing():
    from gptoss_metal.assistant.tools.containment import describe

    bare = {"platform": "linux", "root": False, "namespaces": {}, "landlock": {"abi": 0, "error": "old kernel"},
            "limits": {"processes": 1032, "allowance": 32, "process_count": "user", "cpu_seconds": 60}}
    text = "\n".join(describe(bare))
    assert "files: NOT contained" in text and "old kernel" in text
    assert "network: NOT contained" in text
    assert "at most 32 processes" in text and "counting all your processes" in text
    root = dict(bare, root=True)
    assert "NO bound on how many processes" in "\n".join(describe(root))


def alive(pid: int) -> bool:
    return processes.parent_of(pid, live_only=True) is not None


def test_a_reset_of_the_chat_session_resets_the_interpreter():
    from doubles import ScriptedModel
    from gptoss_metal.assistant import ChatSession, Engine

    session = ChatSession(Engine(ScriptedModel(), model_id="s"), python_tool=True)
    try:
        session.python.run("kept = 1")
        pid = session.python.pid
        session.reset()
        assert session.python.pid is None
        assert eventually_empty(lambda: [pid] if alive(pid) else []) == []
        assert session.python.run("'kept' in globals()").text.strip() == "False"
        pid = session.python.pid
    finally:
        session.close()
    assert session.python.pid is None and not alive(pid)


def test_code_cannot_raise_its_limits_back(tool):
    out = tool.run(textwrap.dedent("""
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (hard + 1, hard + 1))
            print('raised')
        except (ValueError, OSError) as e:
            print('refused', soft == hard)
    """))
    assert out.text.strip() == "refused True"


# -- the command line ------------------------------------------------------------------------


def test_doctor_says_the_containment_in_words():
    out = subprocess.run([sys.executable, "-m", "gptoss_metal.cli.main", "doctor"], capture_output=True, text=True,
                         check=True, env=dict(os.environ, COLUMNS="200"))
    row = out.stdout[out.stdout.index("python tool"):]
    for word in ("files:", "network:", "processes:", "limits:"):
        assert word in row
    assert "{'" not in out.stdout and "'abi'" not in out.stdout


def test_chat_passes_opt_in_read_paths_to_the_tool(tiny_runtime, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    shared = tmp_path / "shared-data"
    shared.mkdir()
    env = dict(os.environ, GPTOSS_CACHE_DIR=str(tmp_path / "cache"), COLUMNS="250", TERM="xterm")
    child = pexpect.spawn(sys.executable, ["-m", "gptoss_metal.cli.main", "chat", str(tiny_runtime), "--python-tool",
                                           "--python-tool-read", str(shared)],
                          env=env, encoding="utf-8", timeout=60, dimensions=(40, 250))
    try:
        child.expect(">>> ")
        child.sendline("/tools")
        child.expect("tools: python")
        child.expect(r"python files: .*reads \(no writes\) " + re.escape(str(shared)))
        child.expect(">>> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    out = subprocess.run([sys.executable, "-m", "gptoss_metal.cli.main", "chat", str(tiny_runtime),
                          "--python-tool-read", str(shared)], capture_output=True, text=True)
    assert out.returncode == 2 and "needs --python-tool" in out.stderr
    out = subprocess.run([sys.executable, "-m", "gptoss_metal.cli.main", "chat", str(tiny_runtime), "--python-tool",
                          "--python-tool-read", str(tmp_path / "missing")], capture_output=True, text=True)
    assert out.returncode == 2 and "does not exist" in out.stderr
