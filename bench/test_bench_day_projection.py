"""Benchmarks of the day-specific input projection (fastbci.ops.day_projection).

Cases, forward and forward+backward (x without grad, as in training: the backward is dW and db):
  fused        the C++/CUDA op (per-day parameters stacked for the batch's days, as the model does)
  official     (a) the official formulation: one matrix stacked per TRIAL + batched einsum
               (fastbci.reference.day_layer_official), dropout from torch's generator
  per_day_loop (b) a torch.matmul per day group, softsign, torch dropout
  dense_gemm   a dense (B*T, C) @ (C, C) GEMM of the same FLOPs: the throughput yardstick
GPU: B=64, T=800, 4 days, C=512, bf16 activations under autocast for (a) and (b), bf16 x for the
fused op, plus peak memory. CPU (no GPU): B=8, T=100, C=512 in float32, marked as CPU figures.
Run: pytest bench/test_bench_day_projection.py --benchmark-only
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from bench_helpers import DEVICE, ON_GPU, median_seconds, peak_memory_bytes, run_bench
from fastbci.ops.day_projection import day_projection, fused_available, fused_supports
from fastbci.reference import day_layer_official, softsign

B, T, C = (64, 800, 512) if ON_GPU else (8, 100, 512)
N_DAYS_TOTAL = 45  # the official model's per-day parameter count
DAYS_PER_BATCH = 4
P = 0.2
DTYPE = torch.bfloat16 if ON_GPU else torch.float32  # activation dtype (autocast on GPU)
FLOPS_FWD = 2 * B * T * C * C
FLOPS = {"forward": FLOPS_FWD, "forward_backward": 2 * FLOPS_FWD}  # + dW (x needs no grad)


class Setup:
    """One batch in the official layout (days one after another) and the 45 per-day parameters."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.days = [3, 17, 29, 41]
        per_day = B // DAYS_PER_BATCH
        extra = B - per_day * DAYS_PER_BATCH  # trials left over go to the last day
        self.day_idx = torch.tensor([d for d in self.days for _ in range(per_day)]
                                    + [self.days[-1]] * extra, device=DEVICE)
        self.local_idx = torch.tensor([i for i in range(DAYS_PER_BATCH) for _ in range(per_day)]
                                      + [DAYS_PER_BATCH - 1] * extra, device=DEVICE)
        self.x = torch.randn(B, T, C, generator=g).to(DEVICE, DTYPE)
        eye = torch.eye(C)
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter((eye + 0.01 * torch.randn(C, C, generator=g)).to(DEVICE))
             for _ in range(N_DAYS_TOTAL)])
        self.biases = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(1, C).to(DEVICE)) for _ in range(N_DAYS_TOTAL)])
        self.grad = torch.randn(B, T, C, generator=g).to(DEVICE, DTYPE)
        self.step = 0

    def zero_grad(self):
        for p in list(self.weights) + list(self.biases):
            p.grad = None

    # -- the variants: each returns the output of the day layer
    def fused(self, p=P):
        self.step += 1
        w = torch.stack([self.weights[d] for d in self.days])
        b = torch.stack([self.biases[d].reshape(-1) for d in self.days])
        return day_projection(self.x, self.local_idx, w, b, dropout_p=p, seed=1, step=self.step,
                              impl="fused")

    def official(self, p=P):
        with _autocast():
            return day_layer_official(self.x, self.day_idx, self.weights, self.biases,
                                      dropout_p=p, training=True)

    def per_day_loop(self, p=P):
        with _autocast():
            out = torch.empty(B, T, C, device=DEVICE, dtype=DTYPE)
            for i, d in enumerate(self.days):
                rows = (self.local_idx == i).nonzero().squeeze(1)
                z = torch.matmul(self.x[rows], self.weights[d]) + self.biases[d]
                out = out.index_copy(0, rows, softsign(z).to(DTYPE))
            return F.dropout(out, p=p, training=True)


def _autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16) if ON_GPU else contextlib.nullcontext()


def _forward_backward(setup: Setup, variant: str):
    def fn():
        setup.zero_grad()
        out = getattr(setup, variant)()
        out.backward(setup.grad.to(out.dtype))
        return out
    return fn


def _forward(setup: Setup, variant: str):
    def fn():
        with torch.no_grad():
            return getattr(setup, variant)()
    return fn


def _info(mode: str, seconds: float | None):
    flops = FLOPS[mode]
    info = {"shape": f"B={B} T={T} C_in=C_out={C} days={DAYS_PER_BATCH}", "dtype": str(DTYPE),
            "flops": flops, "mode": mode,
            "figures": "GPU" if ON_GPU else "CPU figures at small shapes (no GPU here)"}
    if seconds:
        info["tflops"] = flops / seconds / 1e12
    return info


@pytest.fixture(scope="module")
def setup():
    return Setup()


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("variant", ["fused", "official", "per_day_loop"])
def test_day_projection(benchmark, setup, variant, mode):
    if variant == "fused" and not (fused_available() and fused_supports(setup.x)):
        pytest.skip("fastbci._C is not built for this device: "
                    "pip install -e . --no-build-isolation")
    benchmark.group = f"day_projection-{mode}"
    make = _forward if mode == "forward" else _forward_backward
    fn = make(setup, variant)
    out = fn()
    assert out.shape == (B, T, C) and torch.isfinite(out).all()
    if variant == "fused" and mode == "forward":  # same numbers as the per-day loop without dropout
        with torch.no_grad():
            ref, got = setup.per_day_loop(p=0.0).float(), setup.fused(p=0.0).float()
        tol = 3e-2 if ON_GPU else 1e-5
        assert (got - ref).abs().max().item() <= tol, "fused and per-day loop disagree"
    info = {}
    if not benchmark.disabled:
        repeat = 10 if ON_GPU else 3
        t_self = median_seconds(fn, repeat=repeat)
        info = _info(mode, t_self)
        if variant == "fused":  # ratio = reference time / fused time, measured here
            for name in ("official", "per_day_loop"):
                t_ref = median_seconds(make(setup, name), repeat=repeat)
                info[f"speedup_vs_{name}"] = t_ref / t_self
        mem = peak_memory_bytes(fn)
        if mem is not None:
            info["peak_memory_bytes"] = mem
    run_bench(benchmark, fn, **info)


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
def test_dense_gemm_yardstick(benchmark, mode):
    """A dense GEMM with the FLOPs of the day layer (bf16 on GPU, float32 on CPU)."""
    benchmark.group = f"day_projection-{mode}"
    g = torch.Generator().manual_seed(1)
    a = torch.randn(B * T, C, generator=g).to(DEVICE, DTYPE)
    w = torch.randn(C, C, generator=g).to(DEVICE, DTYPE)
    n = 1 if mode == "forward" else 2  # forward + the dW GEMM
    fn = (lambda: a @ w) if n == 1 else (lambda: (a @ w, a.t() @ a))
    fn()
    info = {}
    if not benchmark.disabled:
        info = _info(mode, median_seconds(fn, repeat=10 if ON_GPU else 3))
    run_bench(benchmark, fn, **info)
