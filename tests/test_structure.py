"""The package's shape: no import cycle, no module over 600 lines, no function over 80 lines
(Triton kernels excepted: one @triton.jit function is one GPU program), evaluation independent
of the trainer, and the ruff settings of pyproject.toml clean."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the installed layout (``kernels/`` is
    ``fastbci.kernels``)."""
    out = {}
    for base, prefix in ((ROOT / "fastbci", "fastbci"), (ROOT / "kernels", "fastbci.kernels")):
        for f in sorted(base.rglob("*.py")):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules that ``name`` imports anywhere in its source (functions included:
    a lazy import is still a dependency)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name and t != "fastbci":
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(GRAPH[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(GRAPH):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    """The check above can fail: a planted cycle is found."""
    monkeypatch.setitem(GRAPH, "fastbci.config", GRAPH["fastbci.config"] | {"fastbci.cli"})
    cycle = _cycle()
    assert cycle is not None and "fastbci.config" in cycle and "fastbci.cli" in cycle


def test_evaluation_does_not_depend_on_the_trainer():
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            n = todo.pop()
            for m in GRAPH[n]:
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return seen

    forbidden = {"fastbci.train", "fastbci.cli", "fastbci.training.loop", "fastbci.training"}
    assert not reach("fastbci.evaluate") & forbidden, reach("fastbci.evaluate") & forbidden
    assert {"fastbci.data.batch", "fastbci.validation"} <= GRAPH["fastbci.evaluate"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_and_function_sizes(name):
    path = MODULES[name]
    text = path.read_text()
    n_lines = len(text.splitlines())
    assert n_lines <= MAX_MODULE_LINES, f"{path}: {n_lines} lines (at most {MAX_MODULE_LINES})"
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            jit = any("jit" in ast.unparse(d) for d in node.decorator_list)
            size = node.end_lineno - node.lineno + 1
            if size > MAX_FUNCTION_LINES and not jit:
                long.append(f"{node.name} ({size} lines, line {node.lineno})")
    assert not long, f"{path}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed here (requirements-cpu.txt installs it)")
    proc = subprocess.run([ruff, "check", "fastbci", "kernels", "configs"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
