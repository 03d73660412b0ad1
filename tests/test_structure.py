"""The package's shape: no import cycle between modules or between packages (an import of
``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` too, so it counts as an import of them), the
layers of docs/internals.md (an import only goes down; training/ and data/ reach the reference
only through the ops' dispatch), no module over 450 lines, no class over 250, no function over 80
(Triton kernels excepted: one @triton.jit function is one GPU program) and a training loop of at
most 60, evaluation independent of the trainer, and the ruff settings of pyproject.toml clean.
A package's ``__main__`` (what ``python -m fastbci.X`` runs, imported by nothing) is a command
line entry point: it stands in the top layer, whatever its package's layer."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 80
MAX_LOOP_LINES = 60  # fastbci.training.loop.fit: the loop reads in one screen


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
            # importing a.b.c runs a/__init__ and a/b/__init__ first: those are imports too
            # (except the packages this module is itself inside: they are importing it)
            while t and t != "fastbci":
                if t != name and t in MODULES and not name.startswith(t + "."):
                    found.add(t)
                t = t.rpartition(".")[0]
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle(graph: dict[str, set[str]] | None = None) -> list[str] | None:
    graph = GRAPH if graph is None else graph
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def unit(module: str) -> str:
    """The package (``fastbci.data``) or top-level module (``fastbci.config``) a module belongs
    to; a package's ``__main__`` (a ``python -m`` alias of a command) is a unit of its own."""
    return module if module.endswith(".__main__") else ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for n, targets in graph.items():
        out.setdefault(unit(n), set()).update(unit(m) for m in targets if unit(m) != unit(n))
    return out


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_package_cycle():
    cycle = _cycle(package_graph(GRAPH))
    assert cycle is None, "package import cycle: " + " -> ".join(cycle)


def test_the_package_cycle_finder_follows_init_imports(monkeypatch):
    """ops -> data -> ops (the old day projection <-> batch loop) is found, and an import of a
    module counts as an import of its package's __init__."""
    planted = dict(GRAPH)
    planted["fastbci.ops.day_projection"] = GRAPH["fastbci.ops.day_projection"] | {"fastbci.data.batch"}
    cycle = _cycle(package_graph(planted))
    assert cycle is not None and {"fastbci.ops", "fastbci.data"} <= set(cycle)
    assert "fastbci.training" in _imports("x", _write(monkeypatch, "import fastbci.training.step"))


def _write(monkeypatch, text: str) -> Path:
    import tempfile
    f = Path(tempfile.mkdtemp()) / "x.py"
    f.write_text(text + "\n")
    return f


#: the layers, lowest first: a unit imports only units of its own layer or below
LAYERS = [
    {"fastbci.errors", "fastbci.fileio", "fastbci.philox", "fastbci.config", "fastbci.devices",
     "fastbci.checkpoint", "fastbci.schedule", "fastbci.kernels", "fastbci.state_dict",
     "fastbci.ranges", "fastbci.envcheck", "fastbci.yamlfile", "fastbci.outputs"},
    {"fastbci.reference"},
    {"fastbci.ops"},
    {"fastbci.data", "fastbci.metrics"},
    {"fastbci.model", "fastbci.lm", "fastbci.synth", "fastbci.doctor", "fastbci.loading"},
    {"fastbci.validation", "fastbci.ensemble", "fastbci.official_eval", "fastbci.evaluation"},
    {"fastbci.training", "fastbci.calibration", "fastbci.demo", "fastbci.sweep"},
    {"fastbci.commands", "fastbci.compat"},
    # the python -m aliases: one call into the commands
    {"fastbci.train", "fastbci.evaluate", "fastbci.calibrate"},
]


def _layer(u: str) -> int:
    if u.endswith(".__main__"):  # a python -m alias: with the other aliases, on top
        return len(LAYERS) - 1
    for i, layer in enumerate(LAYERS):
        if u in layer:
            return i
    raise AssertionError(f"{u} is in no layer of tests/test_structure.py LAYERS: place it")


def test_imports_only_go_down_the_layers():
    pg = package_graph(GRAPH)
    up = [f"{a} -> {b}" for a, targets in pg.items() for b in targets if _layer(b) > _layer(a)]
    assert not up, "imports that go up a layer: " + ", ".join(sorted(up))


def test_training_and_data_reach_the_reference_only_through_the_ops():
    bad = [f"{n} -> {m}" for n, targets in GRAPH.items() for m in targets
           if unit(n) in ("fastbci.training", "fastbci.data") and unit(m) == "fastbci.reference"]
    assert not bad, bad


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    """The check above can fail: a planted cycle is found."""
    monkeypatch.setitem(GRAPH, "fastbci.config", GRAPH["fastbci.config"] | {"fastbci.commands"})
    monkeypatch.setitem(GRAPH, "fastbci.commands", GRAPH["fastbci.commands"] | {"fastbci.config"})
    cycle = _cycle()
    assert cycle is not None and "fastbci.config" in cycle and "fastbci.commands" in cycle


def reach(start: str, graph: dict[str, set[str]] | None = None) -> set[str]:
    graph = GRAPH if graph is None else graph
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        for m in graph.get(n, ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


TRAINER = {"fastbci.train", "fastbci.commands.train", "fastbci.training.loop", "fastbci.training"}


def test_evaluation_does_not_depend_on_the_trainer():
    for name in ("fastbci.evaluation", "fastbci.commands.evaluate", "fastbci.calibration",
                 "fastbci.commands.calibrate"):
        # evaluation and calibration reuse the checkpoint and validation parts, never the trainer
        assert not reach(name) & TRAINER, (name, reach(name) & TRAINER)
    assert {"fastbci.data.batch", "fastbci.validation", "fastbci.loading"} <= GRAPH["fastbci.evaluation"]


def test_the_trainer_check_sees_through_package_inits(monkeypatch):
    """The old defect: evaluate imported fastbci.training.validation, whose package __init__
    imports the Trainer. Such an import is found (the graph follows __init__ imports)."""
    planted = dict(GRAPH)
    planted["fastbci.evaluation"] = GRAPH["fastbci.evaluation"] | _imports(
        "fastbci.evaluation", _write(monkeypatch, "from fastbci.training.step import TrainStep"))
    assert {"fastbci.training", "fastbci.training.loop"} <= reach("fastbci.evaluation", planted)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_and_function_sizes(name):
    path = MODULES[name]
    text = path.read_text()
    n_lines = len(text.splitlines())
    assert n_lines <= MAX_MODULE_LINES, f"{path}: {n_lines} lines (at most {MAX_MODULE_LINES})"
    long = []
    for node in ast.walk(ast.parse(text)):
        size = (node.end_lineno - node.lineno + 1) if hasattr(node, "end_lineno") else 0
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            jit = any("jit" in ast.unparse(d) for d in node.decorator_list)
            limit = MAX_LOOP_LINES if (name, node.name) == ("fastbci.training.loop", "fit") \
                else MAX_FUNCTION_LINES
            if size > limit and not jit:
                long.append(f"function {node.name} ({size} lines, line {node.lineno}; at most {limit})")
        elif isinstance(node, ast.ClassDef) and size > MAX_CLASS_LINES:
            long.append(f"class {node.name} ({size} lines, line {node.lineno}; at most "
                        f"{MAX_CLASS_LINES})")
    assert not long, f"{path}: too long: {', '.join(long)}"


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed here (requirements-cpu.txt installs it)")
    proc = subprocess.run([ruff, "check", "fastbci", "kernels", "configs"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
