"""The package layout: one installed top-level name, and imports that point one way (DESIGN.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("architecture", "converters", "metal_runtime", "harmony_io", "assistant", "server", "cli")

# What each part may import (besides the standard library and third-party packages). The arrows
# point one way: cli -> server -> assistant -> {harmony_io, metal_runtime}; cli -> converters;
# everything may use the architecture vocabulary.
ALLOWED = {
    "architecture": set(),
    "converters": {"architecture"},
    "metal_runtime": {"architecture"},
    "harmony_io": set(),
    "assistant": {"architecture", "harmony_io", "metal_runtime"},
    "server": {"architecture", "harmony_io", "metal_runtime", "assistant"},
    "cli": set(SUBPACKAGES) - {"cli"},
}
FORBIDDEN_THIRD_PARTY = {"harmony_io": {"mlx"}, "architecture": {"mlx", "numpy"}}
OLD_TOP_LEVEL = {"cli", "server", "converters", "metal_runtime", "harmony_io", "assistant"}


def _sources(part: str) -> list[Path]:
    return sorted(p for p in (ROOT / part).rglob("*.py"))


def _imports(path: Path, modules: frozenset[str] = frozenset()) -> list[tuple[str, int]]:
    """Absolute module names a file imports (relative imports resolved against the package), wherever
    the import statement is (inside functions and `if TYPE_CHECKING:` too). `from M import N` counts as
    importing M.N where that is one of `modules` (N a submodule), else as importing M."""
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(ROOT).with_suffix("")
    package = ["gptoss_metal", *rel.parts[:-1]]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            submodules = {f"{name}.{a.name}" for a in node.names} & modules
            out += [(m, node.lineno) for m in sorted(submodules)]
            if len(submodules) < len(node.names):
                out.append((name, node.lineno))
    return out


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(["gptoss_metal", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while component[-1:] != [v]:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("part", SUBPACKAGES)
def test_imports_point_one_way(part):
    bad = []
    for path in _sources(part):
        for name, line in _imports(path):
            top = name.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line} imports {name}"
            if top in OLD_TOP_LEVEL:
                bad.append(f"{where} (a bare top-level name; use gptoss_metal.{name})")
            elif top == "gptoss_metal" and name != "gptoss_metal":
                target = name.split(".")[1]
                if target != part and target not in ALLOWED[part]:
                    bad.append(f"{where} ({part} may import {sorted(ALLOWED[part]) or 'nothing of ours'})")
            elif top in FORBIDDEN_THIRD_PARTY.get(part, ()):
                bad.append(f"{where} ({part} must not depend on {top})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("part", SUBPACKAGES)
def test_the_modules_of_a_package_import_each_other_in_one_order(part):
    """No circles between the modules of a package (lazy and TYPE_CHECKING imports count too): its modules
    can be read, tested and changed from the leaves up."""
    modules = {_module_name(p): p for p in _sources(part)}
    graph = {m: {name for name, _ in _imports(p, frozenset(modules)) if name in modules and name != m}
             for m, p in modules.items()}
    circles = _cycles(graph)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_finds_circles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_tests_and_benchmarks_import_the_installed_names():
    bad = []
    for path in sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py")):
        for name, line in _imports(path):
            if name.split(".")[0] in OLD_TOP_LEVEL:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_every_package_folder_is_declared_in_pyproject():
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {"gptoss_metal"}
    for part in SUBPACKAGES:
        folder = ROOT / part
        if folder.is_dir():
            on_disk |= {"gptoss_metal." + ".".join(p.parent.relative_to(ROOT).parts)
                        for p in folder.rglob("__init__.py")}
    assert on_disk == declared


@pytest.mark.slow
def test_a_built_wheel_installs_exactly_one_top_level_name(tmp_path):
    """pip does not detect clashing top-level names, so we install only `gptoss_metal`."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("gptoss_metal-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"gptoss_metal"}
    for needed in ("gptoss_metal/metal_runtime/kernels/router.metal", "gptoss_metal/architecture/__init__.py",
                   "gptoss_metal/assistant/tools/sandbox_child.py", "gptoss_metal/cli/main.py",
                   # the chat page and its vendored libraries, licences included
                   "gptoss_metal/server/static/index.html", "gptoss_metal/server/static/js/app.js",
                   "gptoss_metal/server/static/style.css", "gptoss_metal/server/static/vendor/purify.min.js",
                   "gptoss_metal/server/static/vendor/LICENSE.dompurify",
                   "gptoss_metal/server/static/vendor/README.md"):
        assert needed in names
    assert not any(n.startswith(("gptoss_metal/tests/", "gptoss_metal/benchmarks/", "gptoss_metal/.venv"))
                   for n in names)
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "gptoss = gptoss_metal.cli.main:main" in entry


# Packages whose modules must import each other in one order (no circles). Not yet: metal_runtime
# (expert_paths -> host_experts -> moe -> expert_paths, issue 23's expert-path knot) and server
# (app -> page_routes -> app, a lazy import); add them here once untangled.
ACYCLIC = ("harmony_io", "assistant", "cli", "converters", "server")


def _module_graph(part: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (any import, module level or lazy).

    Names are dotted paths below the package (`parser`, `tools.builtin`, `__init__` for the package
    itself); `from . import x` counts as importing module `x` where `x` is one.
    """
    root = ROOT / part
    modules = {".".join(p.relative_to(root).with_suffix("").parts): p for p in root.rglob("*.py")}
    prefix = f"gptoss_metal.{part}"

    def module_of(name: str) -> Optional[str]:
        if name == prefix:
            return "__init__"
        if not name.startswith(prefix + "."):
            return None
        rest = name[len(prefix) + 1:]
        if rest in modules:
            return rest
        if rest + ".__init__" in modules:
            return rest + ".__init__"
        return None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for name, line in _imports(path):
            target = module_of(name)
            if target is not None and target != mod:
                graph[mod].add(target)
        for node in ast.walk(tree):  # `from . import x, y`: submodules named in the import list
            if isinstance(node, ast.ImportFrom) and node.level and not node.module:
                base = _imports_base(path, node.level)
                for alias in node.names:
                    target = module_of(f"{base}.{alias.name}")
                    if target is not None and target != mod:
                        graph[mod].add(target)
    return graph


def _imports_base(path: Path, level: int) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    package = ["gptoss_metal", *rel.parts[:-1]]
    return ".".join(package[: len(package) - level + 1])


def _cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    """One import circle of `graph`, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> Optional[list[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


@pytest.mark.parametrize("part", ACYCLIC)
def test_modules_inside_a_package_import_each_other_without_circles(part):
    """Each package's modules form layers: a module never (even lazily) imports one that imports it back,
    and no module imports its own package's __init__ (which imports them all)."""
    circle = _cycle(_module_graph(part))
    assert circle is None, f"{part}: " + " -> ".join(circle)


def test_the_circle_finder_finds_circles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = _module_graph("harmony_io")
    assert "events" in graph["parser"] and "grammar" in graph["render"] and "parser" in graph["__init__"]
