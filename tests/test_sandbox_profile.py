"""The macOS sandbox-exec profile of the python tool, checked without a Mac.

No Mac is available to the developers, so the generated profile text is parsed here and evaluated
with the rule Apple's sandbox profile language applies (among the rules whose operation and
filters match, the last one wins; `default` and `name*` operations match as prefixes). This shows
the profile says what we mean; that macOS enforces it is untested (README says so).
"""

from __future__ import annotations

import os
import re
import sys

import pytest

from gptoss_metal.assistant.tools.sandbox_paths import (
    checked_read_paths,
    interpreter_info,
    linux_read_exec_paths,
    macos_profile,
    python_dirs,
    sbpl_string,
)

HOME = "/Users/alice"
WORK = "/private/var/folders/xy/abc123/T/gptoss-python-k2/work"
IO = "/private/var/folders/xy/abc123/T/gptoss-python-k2/io"
VENV = "/Users/alice/.venv"
BREW = "/opt/homebrew/Cellar/python@3.12/3.12.1/Frameworks/Python.framework/Versions/3.12"
TOOLS = "/Users/alice/code/gptoss-metal/assistant/tools"


def parse(text: str) -> list:
    """S-expressions of SBPL: lists, strings (with \\ escapes), symbols."""
    tokens = re.findall(r'\(|\)|"(?:[^"\\]|\\.)*"|[^\s()"]+', text)
    stack: list[list] = [[]]
    for tok in tokens:
        if tok == "(":
            stack.append([])
        elif tok == ")":
            done = stack.pop()
            stack[-1].append(done)
        elif tok.startswith('"'):
            stack[-1].append(("str", re.sub(r"\\(.)", r"\1", tok[1:-1])))
        else:
            stack[-1].append(tok)
    assert len(stack) == 1, "unbalanced parentheses"
    return stack[0]


def _op_matches(rule_op: str, op: str) -> bool:
    if rule_op == "default":
        return True
    if rule_op.endswith("*"):
        return op.startswith(rule_op[:-1])
    return rule_op == op


def _filter_matches(f: list, path: str) -> bool:
    kind, (_, value) = f[0], f[1]
    if kind == "literal":
        return path == value
    if kind == "subpath":
        return path == value or path.startswith(value.rstrip("/") + "/")
    raise AssertionError(f"filter {kind} not modelled")


def decide(profile: str, op: str, path: str | None = None) -> str:
    verdict = None
    for form in parse(profile):
        if form[0] not in ("allow", "deny"):
            continue
        ops = [x for x in form[1:] if isinstance(x, str)]
        filters = [x for x in form[1:] if isinstance(x, list)]
        if not any(_op_matches(o, op) for o in ops):
            continue
        if filters and (path is None or not any(_filter_matches(f, path) for f in filters)):
            continue
        verdict = form[0]
    assert verdict is not None, f"no rule decides {op} {path}"
    return verdict


@pytest.fixture(scope="module")
def profile() -> str:
    return macos_profile(work=WORK, io=IO, home=HOME, python=[VENV, BREW], read_paths=[HOME + "/data"],
                         child_files=[f"{TOOLS}/sandbox_child.py", f"{TOOLS}/sandbox_paths.py"])


@pytest.mark.parametrize("op,path,want", [
    # the home folder, other users and volumes: no contents, no listings, nothing run from there
    ("file-read-data", HOME + "/notes.txt", "deny"),
    ("file-read-data", HOME + "/.ssh/id_ed25519", "deny"),
    ("file-read-data", HOME, "deny"),  # listing it
    ("file-read-xattr", HOME + "/notes.txt", "deny"),
    ("file-read-data", "/Users/bob/secret", "deny"),
    ("file-read-data", "/Users/Shared/x", "deny"),
    ("file-read-data", "/Volumes/USB/photo.jpg", "deny"),
    ("process-exec", HOME + "/bin/tool", "deny"),
    ("file-read-data", "/Users/alice/code/gptoss-metal/README.md", "deny"),
    # its own folders, the Python installation (even inside home), its own scripts, opt-in reads
    ("file-read-data", WORK + "/plot.png", "allow"),
    ("file-write-create", WORK + "/plot.png", "allow"),
    ("file-write-data", IO + "/output.txt", "allow"),
    ("file-read-data", VENV + "/lib/python3.12/site-packages/numpy/__init__.py", "allow"),
    ("process-exec", VENV + "/bin/python", "allow"),
    ("file-read-data", TOOLS + "/sandbox_child.py", "allow"),
    ("file-read-data", TOOLS + "/python_tool.py", "deny"),  # only the files the child runs
    ("file-read-data", HOME + "/data/a.csv", "allow"),
    ("file-write-data", HOME + "/data/a.csv", "deny"),  # opt-in is read-only
    ("process-exec", HOME + "/data/run.sh", "deny"),
    # writes only in its folders
    ("file-write-data", HOME + "/notes.txt", "deny"),
    ("file-write-create", "/tmp/x", "deny"),
    ("file-write-data", "/dev/null", "allow"),
    # the system stays usable; metadata stays readable (Python resolves its paths with it)
    ("file-read-data", "/usr/lib/libSystem.B.dylib", "allow"),
    ("file-read-data", BREW + "/lib/python3.12/json/__init__.py", "allow"),
    ("process-exec", "/bin/ls", "allow"),
    ("file-read-metadata", HOME, "allow"),
    # no network
    ("network-outbound", None, "deny"),
    ("network-bind", None, "deny"),
])
def test_profile_decisions(profile, op, path, want):
    assert decide(profile, op, path) == want


def test_profile_is_well_formed(profile):
    forms = parse(profile)
    assert forms[0] == ["version", "1"] and forms[1] == ["allow", "default"]
    assert profile.count("(") == profile.count(")")


def test_odd_paths_are_quoted_and_control_characters_refused():
    odd = '/Users/al"ice\\x'
    text = macos_profile(work=WORK, io=IO, home=odd, python=[])
    assert decide(text, "file-read-data", odd + "/notes") == "deny"
    assert sbpl_string('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(ValueError, match="control characters"):
        sbpl_string("/Users/x\n(allow default)")


def test_home_outside_users_is_denied_too():
    text = macos_profile(work=WORK, io=IO, home="/Volumes/Data/home/alice", python=[])
    assert decide(text, "file-read-data", "/Volumes/Data/home/alice/x") == "deny"
    text = macos_profile(work=WORK, io=IO, home="/home/alice", python=[])
    assert decide(text, "file-read-data", "/home/alice/x") == "deny"
    assert decide(text, "file-read-data", "/home/bob/x") == "allow"  # only the user's own home is known


def test_python_dirs_never_expose_the_home_folder(tmp_path):
    home = tmp_path / "home"
    venv = home / ".venv"
    (venv / "lib").mkdir(parents=True)
    info = {"prefix": str(venv), "exec_prefix": str(venv), "base_prefix": "/usr", "base_exec_prefix": "/usr",
            "executable": "/usr/bin/python3", "path": ["", str(home), "/", str(venv / "lib"), str(tmp_path / "gone")]}
    dirs = python_dirs(info, home=str(home))
    assert str(venv) in dirs and "/usr" in dirs
    assert str(home) not in dirs and "/" not in dirs and str(tmp_path / "gone") not in dirs
    assert str(venv / "lib") not in dirs  # covered by the venv itself
    assert os.path.realpath(sys.base_prefix) in python_dirs(interpreter_info(), home="/nonexistent-home")


def test_linux_system_paths_leave_out_passwd_and_the_machines_proc():
    paths = linux_read_exec_paths(private_proc=False)
    assert "/usr" in paths and "/etc/passwd" not in paths and "/etc" not in paths and "/proc" not in paths
    assert "/proc" in linux_read_exec_paths(private_proc=True)
    with pytest.raises(ValueError):
        checked_read_paths(["/definitely/not/here"])
