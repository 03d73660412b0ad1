"""Benchmarks: fastbci.ops.patchify, fused (Triton) vs reference (unfold + permute + reshape).

Forward and forward+backward, float32 and bfloat16. On a GPU at the official shapes
(B=64, T=800, C=512, windows 14/4: P=197, output 64 x 197 x 7168); on a CPU at tiny shapes,
with the fused kernels running in the Triton interpreter: those are CPU figures, useful only as a
smoke test, never as a speed claim (extra_info says so).

extra_info: device, shapes, dtype, bytes moved (each input read once, each output written once),
GB/s from the mean time, peak memory above the inputs (GPU), and for the fused cases the ratio
reference time / fused time (median of a few synchronised runs of the reference).

Run: /work/venv/bin/python -m pytest bench/test_bench_patchify.py --benchmark-only -q
As a plain test (benchmarks disabled) every case runs once and checks fused == reference.
"""
from __future__ import annotations

import pytest
import torch

from bench_helpers import DEVICE, ON_GPU, median_seconds, peak_memory_bytes, run_bench
from fastbci.ops.patchify import patchify
from fastbci.reference import n_patches

SIZE, STRIDE = 14, 4
B, T, C = (64, 800, 512) if ON_GPU else (2, 40, 32)
P = n_patches(T, SIZE, STRIDE)


def _inputs(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, C, generator=gen).to(device=DEVICE, dtype=dtype)
    dy = torch.randn(B, P, SIZE * C, generator=gen).to(device=DEVICE, dtype=dtype)
    return x, dy


def _forward(impl):
    def fn(x, dy):
        return patchify(x, SIZE, STRIDE, impl=impl)
    return fn


def _forward_backward(impl):
    def fn(x, dy):
        xg = x.detach().requires_grad_(True)
        y = patchify(xg, SIZE, STRIDE, impl=impl)
        (dx,) = torch.autograd.grad(y, xg, dy)
        return y, dx
    return fn


MODES = {"forward": _forward, "forward+backward": _forward_backward}


def _bytes_moved(mode: str, elsize: int) -> int:
    window_elems = B * P * SIZE * C  # the (B, P, size*C) window tensor
    x_elems = B * T * C
    fwd = (x_elems + window_elems) * elsize        # read x, write windows
    bwd = (window_elems + x_elems) * elsize        # read dy, write dx
    return fwd if mode == "forward" else fwd + bwd


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("mode", list(MODES))
def test_bench_patchify(benchmark, mode, impl, dtype):
    benchmark.group = f"patchify {mode} {str(dtype).replace('torch.', '')}"
    x, dy = _inputs(dtype)
    fn = MODES[mode](impl)

    # Correctness at the benchmarked shape, so a fast wrong kernel can never be reported.
    got, want = fn(x, dy), MODES[mode]("reference")(x, dy)
    if mode == "forward":
        assert torch.equal(got, want), "fused forward differs from the reference"
    else:
        assert torch.equal(got[0], want[0]), "fused forward differs from the reference"
        tol = 1e-6 if dtype == torch.float32 else 2.0 ** -6 * float(want[1].abs().max())
        err = (got[1].float() - want[1].float()).abs().max().item()
        assert err <= tol, f"fused backward differs from the reference by {err:.3g} (tol {tol:.3g})"
    del got, want

    nbytes = _bytes_moved(mode, x.element_size())
    info = {
        "op": "patchify", "mode": mode, "impl": impl, "dtype": str(dtype),
        "shape": f"B={B} T={T} C={C} size={SIZE} stride={STRIDE} P={P}",
        "bytes_moved": nbytes,
        "peak_memory_bytes": peak_memory_bytes(fn, x, dy),
    }
    if not ON_GPU:
        info["note"] = "CPU figures at tiny shapes: not a GPU measurement, not a speed claim"
        if impl == "fused":
            info["note"] += " (the fused kernels run in the Triton interpreter)"
    run_bench(benchmark, fn, x, dy, **info)

    if benchmark.disabled:
        return
    mean = float(benchmark.stats.stats.mean)
    benchmark.extra_info["GB_per_s"] = nbytes / mean / 1e9
    if impl == "fused":
        ref_s = median_seconds(MODES[mode]("reference"), x, dy, repeat=5 if ON_GPU else 3)
        benchmark.extra_info["reference_seconds"] = ref_s
        benchmark.extra_info["ratio_reference_over_fused"] = ref_s / mean
