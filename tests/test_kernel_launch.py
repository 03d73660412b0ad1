"""What every Triton launch of fastbci.kernels shares: the device guard and the 64-bit arguments.

Triton launches on the *current* CUDA device and stream (it asks torch for them), so a tensor on
another GPU must be launched inside ``torch.cuda.device(tensor.device)``. Checked here without a
GPU: the guard helper with a mocked ``torch.cuda.device``, every launch site of the kernels'
source inside ``with device_guard(...)``, and the launchers entering the guard around the launch.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
from pathlib import Path

import pytest
import torch

import fastbci.kernels.launch as launch_mod
from fastbci.kernels.launch import device_guard, int64_bits

KERNEL_MODULES = ("fastbci.kernels.augment", "fastbci.kernels.patchify")


class _FakeCuda:
    """A stand-in with the ``device`` attribute of a CUDA tensor (no GPU needed)."""

    def __init__(self, index: int):
        self.device = torch.device("cuda", index)


def test_device_guard_enters_the_tensors_device(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def fake_device(dev):
        entered.append(dev)
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    with device_guard(_FakeCuda(1)):
        pass
    assert entered == [torch.device("cuda", 1)]
    with device_guard(torch.zeros(1)):  # CPU: nothing to guard
        pass
    assert entered == [torch.device("cuda", 1)]


def _launch_sites(module) -> list[tuple[ast.Call, list[ast.AST]]]:
    """Calls ``kernel[grid](...)`` in a module's source, each with its enclosing nodes."""
    tree = ast.parse(Path(inspect.getsourcefile(module)).read_text())
    parents: dict = {}
    for p in ast.walk(tree):
        for c in ast.iter_child_nodes(p):
            parents[c] = p
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
            chain, n = [], node
            while n in parents:
                n = parents[n]
                chain.append(n)
            sites.append((node, chain))
    return sites


@pytest.mark.parametrize("name", KERNEL_MODULES)
def test_every_launch_is_inside_the_device_guard(name):
    module = importlib.import_module(name)
    sites = _launch_sites(module)
    assert sites, f"{name}: no kernel[grid](...) launch found"
    for call, chain in sites:
        guarded = any(isinstance(w, ast.With) and any(
            isinstance(item.context_expr, ast.Call)
            and getattr(item.context_expr.func, "id", None) == "device_guard"
            for item in w.items) for w in chain)
        assert guarded, f"{name}, line {call.lineno}: a kernel launch outside `with device_guard(...)`"


def test_launchers_run_the_kernels_inside_the_guard(monkeypatch):
    """The launchers enter the guard of their output and launch inside it (kernels replaced by
    recorders: this checks the nesting, the interpreter runs the real kernels elsewhere)."""
    from fastbci.kernels import augment as A
    from fastbci.kernels import patchify as P

    state = {"inside": 0, "launches": []}

    @contextlib.contextmanager
    def guard(t):
        state["inside"] += 1
        try:
            yield
        finally:
            state["inside"] -= 1

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                state["launches"].append((self.name, state["inside"]))
            return launch

    for mod in (A, P):
        monkeypatch.setattr(mod, "device_guard", guard)
    monkeypatch.setattr(A, "_augment_smooth_kernel", Recorder("augment"))
    monkeypatch.setattr(P, "_patchify_fwd_kernel", Recorder("patchify_fwd"))
    monkeypatch.setattr(P, "_patchify_bwd_kernel", Recorder("patchify_bwd"))
    x = torch.zeros(2, 20, 8)
    A.augment_smooth_launch(x, torch.empty(2, 19, 8), torch.ones(9), t_max=20, cut=1,
                            padding="same", seed=1, noise_base=0, offset_base=0, noise_std=1.0,
                            offset_std=0.0)
    P.patchify_forward(x, 14, 4)
    P.patchify_backward(torch.zeros(2, 2, 14 * 8), 20, 14, 4)
    assert state["launches"] == [("augment", 1), ("patchify_fwd", 1), ("patchify_bwd", 1)]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.cuda
def test_cuda_patchify_on_another_device():
    from fastbci.ops.patchify import patchify
    from fastbci.reference import patchify_ref

    x = torch.randn(2, 30, 8, device="cuda:1")
    with torch.cuda.device(0):
        y = patchify(x, 14, 4, impl="fused")
    assert y.device == x.device and torch.equal(y, patchify_ref(x, 14, 4))


def test_int64_bits():
    assert int64_bits(5) == 5 and int64_bits(-3) == -3
    assert int64_bits(2**63) == -(2**63) and int64_bits(2**64 - 1) == -1
    assert int64_bits(2**63 - 1) == 2**63 - 1
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError, match="64 bits"):
            int64_bits(bad)


def test_kernels_launch_imports_no_triton():
    """``fastbci.kernels.launch`` must import without Triton (the reference paths need it)."""
    src = Path(inspect.getsourcefile(launch_mod)).read_text()
    assert "import triton" not in src
