"""fastbci.ops.day_projection (C++/CUDA extension) against fastbci.reference.day_projection_ref.

CPU: float32 forward and gradients within 1e-5 of the reference, float64 gradcheck, opcheck,
the Philox dropout mask bit for bit. CUDA (when present, else skipped with a reason): bf16
tensor-core GEMMs judged by the 2x rule (error vs the float32 reference at most twice the error of
the reference computed in bfloat16).
"""
from __future__ import annotations

import importlib

import pytest
import torch

from fastbci import philox
from fastbci.ops.day_projection import (
    day_projection, fused_available, fused_supports, stack_present_days,
)
from fastbci.reference import day_layer_official, day_projection_ref
from helpers import assert_close

# the module itself: the attribute fastbci.ops.day_projection is the function
_ext = importlib.import_module("fastbci.ops._ext")

HAS_CUDA = torch.cuda.is_available()
HAS_CUDA_KERNEL = HAS_CUDA and fused_available() and _ext.has_kernel("fastbci::day_projection", "cuda")
_CUDA_SKIP = ("no CUDA device" if not HAS_CUDA else
              "fastbci._C was built without its CUDA kernels (torch without CUDA, no nvcc, or "
              "FASTBCI_SKIP_CUDA_BUILD=1)")

needs_ext = pytest.mark.skipif(
    not fused_available(),
    reason="fastbci._C is not built: pip install -e . --no-build-isolation")

DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA_KERNEL, reason=_CUDA_SKIP)])]

# Day layouts: name -> (day index per trial, stacked days D, duplicated trials as (dst, src))
LAYOUTS = {
    "one_day": ([0, 0, 0], 1, []),
    "four_days": ([0, 0, 1, 1, 2, 2, 3, 3], 4, []),
    "any_order": ([2, 0, 3, 1, 0, 2, 3], 4, []),
    "day_with_one_trial": ([0, 0, 1, 2, 2], 3, []),
    "repeated_trials": ([1, 1, 0, 1, 0], 2, [(3, 0), (4, 2)]),
    "unused_stacked_day": ([2, 0, 2], 3, []),
}


# --------------------------------------------------------------------------- helpers


def assert_2x_rule(actual, ref32, ref_lowp, what, floor=1e-6):
    """Error of ``actual`` vs the float32 reference <= 2x the low-precision reference's error."""
    actual = actual.detach().float().cpu()
    ref32 = ref32.detach().float().cpu()
    ref_lowp = ref_lowp.detach().float().cpu()
    err = (actual - ref32).abs().max().item()
    base = (ref_lowp - ref32).abs().max().item()
    assert err <= 2 * base + floor, (
        f"{what}: max error vs the float32 reference {err:.4g} exceeds 2x the bf16 reference's "
        f"error {base:.4g}")


def make_case(layout, T, C_in, C_out, device, seed=0):
    days, D, repeats = LAYOUTS[layout]
    g = torch.Generator().manual_seed(seed)
    B = len(days)
    x = torch.randn(B, T, C_in, generator=g)
    for dst, src in repeats:  # a trial drawn twice (sampling with replacement)
        x[dst] = x[src]
    weight = (torch.eye(C_in, C_out).expand(D, C_in, C_out)
              + 0.2 * torch.randn(D, C_in, C_out, generator=g))
    bias = 0.5 * torch.randn(D, C_out, generator=g)
    # gradients scaled like a mean loss, so the (B * T)-term reductions of grad_weight stay O(1)
    grad = torch.randn(B, T, C_out, generator=g) / (B * T) ** 0.5
    day_idx = torch.tensor(days, dtype=torch.int64)
    return [t.to(device) for t in (x, day_idx, weight.contiguous(), bias, grad)]


def run(fn, x, day_idx, weight, bias, grad, **kw):
    """Forward + backward; returns (out, dx, dw, db)."""
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    bias = bias.detach().requires_grad_()
    out = fn(x, day_idx, weight, bias, **kw)
    out.backward(grad.to(out.dtype))
    return out, x.grad, weight.grad, bias.grad


def fused(*a, **kw):
    return day_projection(*a, impl="fused", **kw)


# --------------------------------------------------------------------------- exact match
@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
@pytest.mark.parametrize("T", [1, 15, 800])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_matches_reference_float32(device, layout, T, dropout_p):
    C_in, C_out = (17, 24) if layout == "any_order" else (16, 16)
    x, day_idx, weight, bias, grad = make_case(layout, T, C_in, C_out, device)
    kw = dict(dropout_p=dropout_p, seed=1234, step=77)
    got = run(fused, x, day_idx, weight, bias, grad, **kw)
    ref = run(day_projection_ref, x, day_idx, weight, bias, grad, **kw)
    names = ("output", "grad_x", "grad_weight", "grad_bias")
    if device == "cpu":
        for a, e, n in zip(got, ref, names):
            assert a.dtype == e.dtype, f"{n}: dtype {a.dtype} != {e.dtype}"
            assert_close(a, e, atol=1e-5, rtol=1e-5, what=f"{n} ({layout}, T={T}, p={dropout_p})")
    else:  # CUDA: float32 x goes through bf16 tensor cores -> 2x rule against a bf16 reference
        lowp = run(day_projection_ref, x.bfloat16(), day_idx, weight.bfloat16(), bias.bfloat16(),
                   grad, **kw)
        for a, e, lo, n in zip(got, ref, lowp, names):
            assert_2x_rule(a, e, lo, f"{n} ({layout}, T={T}, p={dropout_p})")
    if dropout_p > 0:
        assert torch.equal(got[0] == 0, ref[0] == 0), "dropout masks differ from the reference"
        assert 0.1 < (got[0] == 0).float().mean().item() < 0.3, "dropout rate far from p"
    if layout == "unused_stacked_day":
        assert torch.count_nonzero(got[2][1]) == 0 and torch.count_nonzero(got[3][1]) == 0, \
            "a stacked day with no trials must get zero grad_weight / grad_bias"


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
@pytest.mark.parametrize("layout,T",
                         [("four_days", 15), ("any_order", 17), ("day_with_one_trial", 1)])
def test_matches_reference_bfloat16(device, layout, T, dropout_p):
    x, day_idx, weight, bias, grad = make_case(layout, T, 64, 64, device, seed=3)
    xb = x.bfloat16()
    kw = dict(dropout_p=dropout_p, seed=99, step=5)
    got = run(fused, xb, day_idx, weight, bias, grad, **kw)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.bfloat16
    assert got[2].dtype == torch.float32 and got[3].dtype == torch.float32
    ref32 = run(day_projection_ref, xb.float(), day_idx, weight, bias, grad, **kw)
    ref16 = run(day_projection_ref, xb, day_idx, weight.bfloat16(), bias.bfloat16(), grad, **kw)
    for a, e, lo, n in zip(got, ref32, ref16, ("output", "grad_x", "grad_weight", "grad_bias")):
        assert_2x_rule(a, e, lo, f"{n} ({layout}, T={T}, p={dropout_p}, {device})")
    if dropout_p > 0:
        assert torch.equal(got[0] == 0, ref32[0] == 0), "dropout masks differ from the reference"


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_official_width_512(device, dropout_p):
    x, day_idx, weight, bias, grad = make_case("any_order", 3, 512, 512, device, seed=7)
    kw = dict(dropout_p=dropout_p, seed=10, step=119999)
    got = run(fused, x, day_idx, weight, bias, grad, **kw)
    ref = run(day_projection_ref, x, day_idx, weight, bias, grad, **kw)
    if device == "cpu":
        for a, e, n in zip(got, ref, ("output", "grad_x", "grad_weight", "grad_bias")):
            assert_close(a, e, atol=1e-5, rtol=1e-5, what=f"{n} (C=512, p={dropout_p})")
    else:
        lowp = run(day_projection_ref, x.bfloat16(), day_idx, weight.bfloat16(), bias.bfloat16(),
                   grad, **kw)
        for a, e, lo, n in zip(got, ref, lowp, ("output", "grad_x", "grad_weight", "grad_bias")):
            assert_2x_rule(a, e, lo, f"{n} (C=512, p={dropout_p})")


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed,step", [(0, 0), (1, 3), (2**40 + 17, 12345),
                                       (2**64 - 5, philox.MAX_STEP)])
def test_dropout_mask_bit_exact(device, seed, step):
    """x = 0, bias = 1 -> softsign = 0.5 everywhere, so 2 * output IS the mask: compare it with
    fastbci.philox.dropout_mask bit for bit (large element indices, 64-bit keys, the last step)."""
    B, T, C = 3, 333, 128
    p = 0.35
    x = torch.zeros(B, T, C, device=device)
    day_idx = torch.tensor([1, 0, 1], device=device)
    weight = torch.zeros(2, C, C, device=device)
    bias = torch.ones(2, C, device=device)
    out = day_projection(x, day_idx, weight, bias, dropout_p=p, seed=seed, step=step, impl="fused")
    mask = philox.dropout_mask((B, T, C), p, seed, step, device=device)
    assert torch.equal(out * 2, mask), (
        f"mask differs at {int((out * 2 != mask).sum())} of {mask.numel()} elements")


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_bias_gradient_sums_unrounded_dz(device):
    """grad_bias is the float32 sum of dz = grad * mask * scale * (1 - |out / scale|)^2, dz
    formed from the op's own (bf16) output and never rounded to bf16 first: within float32
    summation error (2e-4 relative for ~500 equal terms) of that sum taken in float64.

    With bf16 x, grad = 1 and x = 0 (z = bias: one value per column), every kept element of a
    column has the same dz, generally not a bf16 number: a dz rounded to bf16 before the sum (the
    CUDA scratch was once allocated in x's dtype) is off by up to 2**-9 = 2e-3 in most columns.
    """
    B, T, C = 3, 333, 128
    p = 0.2
    g = torch.Generator().manual_seed(8)
    x = torch.zeros(B, T, C, device=device, dtype=torch.bfloat16)
    day_idx = torch.tensor([1, 0, 1], device=device)
    weight = (0.1 * torch.randn(2, C, C, generator=g)).to(device)
    bias = torch.randn(2, C, generator=g).to(device)
    grad = torch.ones(B, T, C, device=device)
    out, _, _, db = run(fused, x, day_idx, weight, bias, grad, dropout_p=p, seed=3, step=4)
    scale = 1.0 / (1.0 - p)
    y = out.detach().double().cpu()
    dz = torch.where(y != 0, scale * (1 - (y / scale).abs()) ** 2, torch.zeros_like(y))
    days = day_idx.cpu()
    want = torch.stack([dz[days == d].sum(dim=(0, 1)) for d in range(2)])
    assert_close(db, want, atol=0.0, rtol=2e-4, what=f"grad_bias vs the sum of dz ({device})")


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_only_weight_grads_and_noncontiguous(device):
    """x without requires_grad (the training case: dX is skipped) and strided inputs."""
    x, day_idx, weight, bias, grad = make_case("any_order", 15, 16, 16, device, seed=5)
    x_strided = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not x_strided.is_contiguous()
    w = weight.transpose(1, 2).contiguous().transpose(1, 2).detach().requires_grad_()
    b = bias.clone().requires_grad_()
    out = fused(x_strided, day_idx, w, b, dropout_p=0.2, seed=3, step=1)
    out.backward(grad)
    w_ref, b_ref = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    ref = day_projection_ref(x, day_idx, w_ref, b_ref, 0.2, 3, 1)
    ref.backward(grad)
    tol = 1e-5 if device == "cpu" else 3e-2
    assert_close(out, ref, atol=tol, rtol=tol, what="output (strided)")
    assert_close(w.grad, w_ref.grad, atol=tol, rtol=tol, what="grad_weight (x without grad)")
    assert_close(b.grad, b_ref.grad, atol=tol, rtol=tol, what="grad_bias (x without grad)")


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_absent_days_get_no_gradient(device):
    """Six per-day parameters, a batch with three days: only those three get a gradient, equal to
    the official per-trial formulation's."""
    C, T = 16, 15
    g = torch.Generator().manual_seed(11)
    weights = torch.nn.ParameterList(
        [torch.nn.Parameter((torch.eye(C) + 0.1 * torch.randn(C, C, generator=g)).to(device))
         for _ in range(6)])
    biases = torch.nn.ParameterList(
        [torch.nn.Parameter((0.1 * torch.randn(1, C, generator=g)).to(device)) for _ in range(6)])
    days = torch.tensor([4, 1, 4, 5, 1], device=device)
    x = torch.randn(5, T, C, generator=g).to(device)
    grad = torch.randn(5, T, C, generator=g).to(device)

    local, w, b = stack_present_days(days, weights, biases)
    assert w.shape == (3, C, C) and b.shape == (3, C)
    fused(x, local, w, b).backward(grad)
    got_w = [None if p.grad is None else p.grad.clone() for p in weights]
    got_b = [None if p.grad is None else p.grad.clone() for p in biases]
    for p in list(weights) + list(biases):
        p.grad = None
    day_layer_official(x, days, list(weights), list(biases)).backward(grad)
    for d in range(6):
        if d in (1, 4, 5):
            tol = 1e-5 if device == "cpu" else 5e-2
            assert_close(got_w[d], weights[d].grad, atol=tol, rtol=tol, what=f"day {d} weight grad")
            assert_close(got_b[d], biases[d].grad, atol=tol, rtol=tol, what=f"day {d} bias grad")
        else:
            assert got_w[d] is None and got_b[d] is None, f"absent day {d} received a gradient"


# --------------------------------------------------------------------------- registration
@needs_ext
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_gradcheck_float64(dropout_p):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(2, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(2, 6, dtype=torch.float64, generator=g, requires_grad=True)
    day_idx = torch.tensor([1, 0, 1])
    fn = lambda x, w, b: fused(x, day_idx, w, b, dropout_p=dropout_p, seed=5, step=9)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-6)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_opcheck(device, dropout_p):
    x, day_idx, weight, bias, grad = make_case("any_order", 5, 8, 12, device, seed=4)
    args = (x.requires_grad_(), day_idx, weight.requires_grad_(), bias.requires_grad_(),
            dropout_p, 17, 3)
    torch.library.opcheck(torch.ops.fastbci.day_projection.default, args)
    out = torch.ops.fastbci.day_projection(
        *[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    for compute_dx in (True, False):
        bargs = (grad, out, x.detach(), day_idx, weight.detach(), dropout_p, 17, 3, compute_dx)
        torch.library.opcheck(torch.ops.fastbci.day_projection_backward.default, bargs)


@needs_ext
def test_fused_is_auto_default_on_cpu():
    x, day_idx, weight, bias, _ = make_case("four_days", 3, 8, 8, "cpu")
    assert fused_supports(x) and fused_supports(x.double())
    auto = day_projection(x, day_idx, weight, bias, dropout_p=0.2, seed=1, step=2)
    assert torch.equal(auto, fused(x, day_idx, weight, bias, dropout_p=0.2, seed=1, step=2))


@needs_ext
def test_64bit_seed_reaches_the_op():
    x, day_idx, weight, bias, _ = make_case("four_days", 6, 8, 8, "cpu")
    seed = 2**63 + 12345  # passed to the op as a negative int64, used as the unsigned key
    got = fused(x, day_idx, weight, bias, dropout_p=0.5, seed=seed, step=4)
    ref = day_projection_ref(x, day_idx, weight, bias, 0.5, seed, 4)
    assert torch.equal(got == 0, ref == 0)
    assert_close(got, ref, atol=1e-6, rtol=1e-6, what="output with a 64-bit seed")


@pytest.mark.skipif(not HAS_CUDA_KERNEL, reason=_CUDA_SKIP)
def test_cuda_bad_day_index_gives_nan():
    x, day_idx, weight, bias, _ = make_case("four_days", 5, 16, 16, "cuda")
    day_idx = day_idx.clone()
    day_idx[2] = 9  # not checked on the host (no sync): the kernel flags the trial with NaN
    out = torch.ops.fastbci.day_projection(x, day_idx, weight, bias, 0.0, 0, 0)
    assert torch.isnan(out[2]).all() and not torch.isnan(out[[0, 1, 3]]).any()


# --------------------------------------------------------------------------- errors
def _valid():
    return make_case("four_days", 3, 8, 8, "cpu")[:4]


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: (a[0][0], *a[1:]), ValueError, r"x must be \(B, T, C_in\)"),
    (lambda a: (a[0], a[1][:3], *a[2:]), ValueError, r"day_idx must be \(B,\)"),
    (lambda a: (a[0], a[1].float(), *a[2:]), TypeError, "day_idx must be int64 or int32"),
    (lambda a: (a[0], a[1], a[2][:, :5], a[3]), ValueError, r"weight must be \(D, C_in=8"),
    (lambda a: (a[0], a[1], a[2], a[3][:2]), ValueError, r"bias must be \(D, C_out\) = \(4, 8\)"),
    (lambda a: (a[0], a[1] + 3, a[2], a[3]), ValueError, "must index the 4 stacked days"),
    (lambda a: (a[0].long(), *a[1:]), TypeError, "x must be floating point"),
    (lambda a: (a[0], a[1], a[2].double(), a[3].double()), TypeError, "float32 weight and bias"),
    (lambda a: (a[0].half(), *a[1:]), TypeError, "float32, bfloat16 or float64"),
    (lambda a: (a[0], a[1], a[2].to("meta"), a[3]), ValueError, "must be on one device"),
    (lambda a: (a[0].double(), a[1], a[2], a[3]), TypeError, "float64 weight and bias"),
])
@needs_ext
def test_bad_inputs_raise_clear_errors(mutate, exc, match):
    with pytest.raises(exc, match=match):
        fused(*mutate(_valid()))


@pytest.mark.parametrize("kw,match", [
    (dict(dropout_p=1.0), r"dropout_p must be in \[0, 1\)"),
    (dict(dropout_p=-0.1), r"dropout_p must be in \[0, 1\)"),
    (dict(seed=-1), r"seed must be in \[0, 2\*\*64\)"),
    (dict(step=philox.MAX_STEP + 1), "step must be in"),
    (dict(impl="cuda"), "impl must be one of"),
])
def test_bad_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        day_projection(*_valid(), **kw)


@needs_ext
def test_op_checks_when_called_directly():
    x, day_idx, weight, bias = _valid()
    with pytest.raises(RuntimeError, match=r"day_idx\[0\] = 7 does not index the 4 stacked days"):
        torch.ops.fastbci.day_projection(x, torch.full_like(day_idx, 7), weight, bias, 0.0, 0, 0)
    with pytest.raises(RuntimeError, match=r"dropout_p must be in \[0, 1\)"):
        torch.ops.fastbci.day_projection(x, day_idx, weight, bias, 1.5, 0, 0)
    with pytest.raises(RuntimeError, match=r"bias must be \(D, C_out\)"):
        torch.ops.fastbci.day_projection(x, day_idx, weight, bias.t(), 0.0, 0, 0)


def test_fused_without_extension_says_how_to_build(monkeypatch):
    monkeypatch.setattr(_ext, "_error", "ImportError: No module named 'fastbci._C'")
    assert not fused_available()
    with pytest.raises(RuntimeError, match="pip install -e . --no-build-isolation"):
        day_projection(*_valid(), impl="fused")
    # auto falls back to the reference
    x, day_idx, weight, bias = _valid()
    assert torch.equal(day_projection(x, day_idx, weight, bias, dropout_p=0.1, seed=2, step=3),
                       day_projection_ref(x, day_idx, weight, bias, 0.1, 2, 3))
