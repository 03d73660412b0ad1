"""Shared test helpers (imported by the test modules; pytest puts tests/ on sys.path)."""
from __future__ import annotations

import torch


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 0.0, rtol: float = 0.0,
                 what: str = "tensor", *, check_dtype: bool = False) -> None:
    """``|actual - expected| <= atol + rtol * |expected|`` elementwise, compared in float64 on the
    CPU; on failure it says how many elements differ, the worst one and where, and the first few."""
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    if check_dtype:
        assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    err = (a - e).abs()
    bad = ~(err <= atol + rtol * e.abs())  # NaN counts as a difference
    if bool(bad.any()):
        worst = int(torch.nan_to_num(err, nan=float("inf")).flatten().argmax()) if err.numel() else 0
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), err.shape)) if err.dim() else ()
        idx = bad.nonzero()[:5].tolist()
        first = ", ".join(f"{tuple(i)}: {a[tuple(i)].item():.9g} vs {e[tuple(i)].item():.9g}" for i in idx)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ beyond atol={atol} + "
            f"rtol={rtol}*|expected|; worst at {where}: {a.flatten()[worst].item():.9g} vs "
            f"{e.flatten()[worst].item():.9g} (max |diff| {err.max().item():.3g}); first: {first}")


def run_gpu_compile_script(script: str, what: str) -> str:
    """Run ``script`` (which compiles Triton kernels ahead of time for a GPU target with Triton's
    bundled ptxas: no GPU needed) in a fresh interpreter with TRITON_INTERPRET=0; skip when
    Triton's NVIDIA backend is missing; returns its stdout, which must say "compiled"."""
    import os
    import subprocess
    import sys

    import pytest

    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError:
        pytest.skip("Triton's NVIDIA backend is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "compiled" in res.stdout, (
        f"GPU compilation of {what} failed:\n{res.stdout}\n{res.stderr[-3000:]}")
    return res.stdout
