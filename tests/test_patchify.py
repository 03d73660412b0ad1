"""fastbci.ops.patchify: the Triton kernels (forward copy, backward fold) against the reference.

On a CPU machine the fused path runs through the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before any kernel is defined); with a GPU every case also runs on CUDA.
Forward must be bit-identical to ``patchify_ref`` (it is a copy); backward must match autograd
through the reference within 1e-6 in float32 (only the summation order can differ).
"""
from __future__ import annotations

import pytest
import torch

from fastbci.ops.dispatch import resolve
from fastbci.ops.patchify import Patchify, patchify
from fastbci.reference import n_patches, patchify_ref
from helpers import JIT_SPEC_PRELUDE, assert_close, non_specialised, run_gpu_compile_script

TRITON_KERNEL_TESTS = True  # see tests/conftest.py: CPU cases need the Triton interpreter


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    assert_close(actual, expected, atol=0.0, what=what, check_dtype=True)


def _ref_grad(x: torch.Tensor, dy: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    xr = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(patchify_ref(xr, size, stride), xr, dy)
    return g


def _fused_grad(x: torch.Tensor, dy: torch.Tensor, size: int, stride: int):
    xf = x.detach().clone().requires_grad_(True)
    y = patchify(xf, size, stride, impl="fused")
    (g,) = torch.autograd.grad(y, xf, dy)
    return y, g


# (B, T, C, size, stride): the brief's odd shapes at the official geometry, then other geometries
# (stride 1, stride == size, stride > size leaving gaps, size 1, a single window).
SHAPES = (
    [(B, T, 7, 14, 4) for B in (1, 3) for T in (14, 15, 17, 18, 33)]
    + [(B, T, 512, 14, 4) for B in (1, 3) for T in (14, 17)]
    + [(2, 9, 5, 4, 1), (2, 20, 3, 5, 5), (3, 23, 6, 3, 5), (1, 7, 4, 1, 1), (2, 16, 9, 16, 4),
       (2, 19, 33, 6, 4)]
)


@pytest.mark.parametrize("B,T,C,size,stride", SHAPES)
def test_forward_backward_match_reference_fp32(device, B, T, C, size, stride):
    g = torch.Generator().manual_seed(B * 1000 + T * 10 + C)
    x = torch.randn(B, T, C, generator=g).to(device)
    P = n_patches(T, size, stride)
    dy = torch.randn(B, P, size * C, generator=g).to(device)
    y, dx = _fused_grad(x, dy, size, stride)
    tag = f"B={B} T={T} C={C} size={size} stride={stride}"
    assert y.shape == (B, P, size * C), f"{tag}: forward shape {tuple(y.shape)}"
    assert_equal(y, patchify_ref(x, size, stride), what=f"forward {tag}")
    assert_close(dx, _ref_grad(x, dy, size, stride), atol=1e-6, what=f"backward {tag}", check_dtype=True)


def _noncontig_inputs(device):
    """Views of different layouts, each (B, T, C) = (3, 18, 7) or close to it."""
    base = torch.randn(3, 7, 40, generator=torch.Generator().manual_seed(5)).to(device)
    return {
        "transposed (B, C, T) view": base.transpose(1, 2)[:, :18],
        "time sliced with step 2": base.transpose(1, 2)[:, ::2],
        "channel slice with step": torch.randn(3, 18, 15, device=device)[..., ::2],
        "batch-expanded (stride 0)": torch.randn(1, 18, 7, device=device).expand(3, 18, 7),
        "time offset slice": torch.randn(3, 25, 7, device=device)[:, 5:23],
    }


@pytest.mark.parametrize("layout", list(_noncontig_inputs("cpu").keys()))
def test_noncontiguous_input(device, layout):
    x = _noncontig_inputs(device)[layout]
    assert not x.is_contiguous()
    size, stride = 14, 4
    dy = torch.randn(patchify_ref(x, size, stride).shape, device=device)
    y, dx = _fused_grad(x, dy, size, stride)
    assert y.is_contiguous()
    assert_equal(y, patchify_ref(x, size, stride), what=f"forward, {layout}")
    assert_close(dx, _ref_grad(x, dy, size, stride), atol=1e-6, what=f"backward, {layout}", check_dtype=True)


@pytest.mark.parametrize("layout", ["transposed", "expanded (from .sum())", "sliced"])
def test_noncontiguous_grad_output(device, layout):
    B, T, C, size, stride = 3, 21, 5, 14, 4
    x = torch.randn(B, T, C, device=device)
    P = n_patches(T, size, stride)
    if layout == "transposed":
        dy = torch.randn(B, size * C, P, device=device).transpose(1, 2)
    elif layout == "expanded (from .sum())":
        dy = torch.ones(1, 1, 1, device=device).expand(B, P, size * C)
    else:
        dy = torch.randn(B, 2 * P, size * C + 3, device=device)[:, ::2, 3:]
    assert not dy.is_contiguous()
    _, dx = _fused_grad(x, dy, size, stride)
    assert_close(dx, _ref_grad(x, dy, size, stride), atol=1e-6, what=f"backward, dy {layout}", check_dtype=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,T,C", [(1, 14, 7), (3, 17, 7), (3, 33, 12), (2, 18, 512)])
def test_low_precision(device, dtype, B, T, C):
    size, stride = 14, 4
    gen = torch.Generator().manual_seed(T + C)
    x32 = torch.randn(B, T, C, generator=gen).to(device)
    dy32 = torch.randn(B, n_patches(T, size, stride), size * C, generator=gen).to(device)
    x, dy = x32.to(dtype), dy32.to(dtype)
    y, dx = _fused_grad(x, dy, size, stride)
    assert y.dtype == dtype and dx.dtype == dtype
    assert_equal(y, patchify_ref(x, size, stride), what=f"forward {dtype}")
    # 2x rule: error vs the float32 reference at most twice that of the reference run in low
    # precision (plus one rounding of the exact sum, for the cases where the reference is exact).
    exact = _ref_grad(x.float(), dy.float(), size, stride)
    ref_lp = _ref_grad(x, dy, size, stride)
    err_fused = (dx.float() - exact).abs().max().item()
    err_ref = (ref_lp.float() - exact).abs().max().item()
    half_ulp = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    one_rounding = exact.abs().max().item() * half_ulp
    assert err_fused <= 2 * err_ref + one_rounding, (
        f"{dtype} B={B} T={T} C={C}: fused backward error {err_fused:.3g} exceeds 2x the "
        f"reference's {err_ref:.3g} (+ one rounding {one_rounding:.3g})")


def test_gradcheck_and_double_backward(device):
    x = torch.randn(2, 8, 3, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda t: patchify(t, 3, 2, impl="fused")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-9, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-9, fast_mode=True)


def test_uncovered_steps_get_zero_grad(device):
    # T = 20 with size 5, stride 6: windows at 0-4, 6-10, 12-16; steps 5, 11, 17-19 are unused.
    x = torch.randn(2, 20, 4, device=device, requires_grad=True)
    y = patchify(x, 5, 6, impl="fused")
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    covered = torch.zeros(20, dtype=torch.bool)
    for p in range(3):
        covered[6 * p:6 * p + 5] = True
    assert bool((dx[:, ~covered.to(device)] == 0).all()), "uncovered steps must get zero gradient"
    assert bool((dx[:, covered.to(device)] == 1).all()), (
        "each covered step is in exactly one window")


def test_empty_batch_and_channels(device):
    for shape in [(0, 17, 7), (2, 17, 0)]:
        x = torch.randn(*shape, device=device, requires_grad=True)
        y = patchify(x, impl="fused")
        assert y.shape == patchify_ref(x).shape
        (dx,) = torch.autograd.grad(y.sum(), x)
        assert dx.shape == x.shape and dx.dtype == x.dtype, (
            f"{shape}: grad {tuple(dx.shape)} {dx.dtype}")


def test_impl_selection_and_module(device):
    x = torch.randn(2, 18, 7, device=device)
    expect = "fused" if device.type == "cuda" else "reference"
    assert resolve("patchify", x, "auto") == expect
    assert resolve("patchify", x.long(), "auto") == "reference"
    for impl in ("auto", "fused", "reference"):
        assert_equal(patchify(x, impl=impl), patchify_ref(x), what=f"impl={impl}")
    m = Patchify(14, 4, impl="fused")
    assert "size=14, stride=4" in repr(m)
    assert_equal(m(x), patchify_ref(x), what="Patchify module")


@pytest.mark.parametrize("args,kwargs,exc,match", [
    ((torch.zeros(3, 20),), {}, ValueError, r"\(B, T, C\)"),
    ((torch.zeros(2, 13, 4),), {}, ValueError, "at least size=14 time steps, got T=13"),
    ((torch.zeros(2, 20, 4), 0), {}, ValueError, "size must be positive"),
    ((torch.zeros(2, 20, 4), 14, -1), {}, ValueError, "stride must be positive"),
    ((torch.zeros(2, 20, 4), True), {}, TypeError, "size must be an int"),
    ((torch.zeros(2, 20, 4), 14, 2.0), {}, TypeError, "stride must be an int"),
    ((torch.zeros(2, 20, 4),), {"impl": "triton"}, ValueError, "impl must be one of"),
    (([[1.0]],), {}, TypeError, "must be a torch.Tensor"),
    ((torch.zeros(2, 20, 4, dtype=torch.int32),), {"impl": "fused"}, TypeError,
     "impl='fused' supports"),
])
def test_bad_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        patchify(*args, **kwargs)


def test_fused_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    import fastbci.kernels.launch
    monkeypatch.setattr(fastbci.kernels.launch, "INTERPRETED", False)  # kernels defined for a GPU
    with pytest.raises(RuntimeError, match="needs a CUDA tensor"):
        patchify(torch.zeros(2, 20, 4), impl="fused")


def test_kernel_launcher_checks():
    from fastbci.kernels.patchify import patchify_backward, patchify_forward
    with pytest.raises(ValueError, match="multiple of size"):
        patchify_backward(torch.zeros(1, 2, 15), T=18)
    with pytest.raises(ValueError, match="give 2"):
        patchify_backward(torch.zeros(1, 3, 14), T=18)
    with pytest.raises(ValueError, match="T >= size"):
        patchify_forward(torch.zeros(1, 5, 2))


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_custom_ops_opcheck(device, layout):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of both ops."""
    x = torch.randn(2, 18, 7, device=device, requires_grad=True)
    dy = torch.randn(2, 2, 98, device=device, requires_grad=True)
    if layout == "transposed":
        x = torch.randn(2, 7, 18, device=device).transpose(1, 2).requires_grad_(True)
        dy = torch.randn(2, 98, 2, device=device).transpose(1, 2).requires_grad_(True)
    for op, args in [(torch.ops.fastbci.patchify_windows.default, (x, 14, 4)),
                     (torch.ops.fastbci.patchify_fold.default, (dy, 18, 14, 4))]:
        result = torch.library.opcheck(op, args)
        failed = {k: v for k, v in result.items() if v != "SUCCESS"}
        assert not failed, f"opcheck {op} ({layout}): {failed}"


def test_torch_compile_fullgraph(device):
    """The fused op is one opaque node for torch.compile: no graph break, same values and grads."""
    torch._dynamo.reset()
    fn = torch.compile(lambda t: (patchify(t, 14, 4, impl="fused") * 2).sum(), backend="aot_eager",
                       fullgraph=True)
    x = torch.randn(3, 19, 5, device=device, requires_grad=True)
    fn(x).backward()
    xr = x.detach().clone().requires_grad_(True)
    (patchify_ref(xr, 14, 4) * 2).sum().backward()
    assert_close(x.grad, xr.grad, atol=1e-6, what="compiled fused backward", check_dtype=True)


_AOT_SCRIPT = JIT_SPEC_PRELUDE + r"""
import sys
import torch
from fastbci.kernels import patchify as K
from helpers import non_specialised

assert non_specialised(K._patchify_fwd_kernel) == set(K.FWD_PER_BATCH_ARGS)
assert non_specialised(K._patchify_bwd_kernel) == set(K.BWD_PER_BATCH_ARGS)
SIZE, STRIDE, C = 14, 4, 512
block_r, block_c = K._blocks(C)


def fwd(T, dt):
    x = torch.zeros(2, T, C, dtype=dt)
    P = (T - SIZE) // STRIDE + 1
    return jit_spec(K._patchify_fwd_kernel, x, x, 2 * P * SIZE, C, P, *x.stride(), SIZE=SIZE,
                    STRIDE=STRIDE, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)


def bwd(T, dt):
    P = (T - SIZE) // STRIDE + 1
    dy = torch.zeros(2, P, SIZE * C, dtype=dt)
    return jit_spec(K._patchify_bwd_kernel, dy, dy, 2 * T, T, C, P, *dy.stride(), SIZE=SIZE,
                    STRIDE=STRIDE, N_COVER=K.n_windows_covering(SIZE, STRIDE),
                    ACC_FP64=dt == torch.float64, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)


for name, spec, fn in (("fwd", fwd, K._patchify_fwd_kernel), ("bwd", bwd, K._patchify_bwd_kernel)):
    for dt in (torch.float32, torch.bfloat16, torch.float64):
        base = spec(800, dt)
        for T in (14, 15, 17, 801, 1025):  # other batch lengths: the same kernel
            if spec(T, dt) != base:
                sys.exit(f"{name} {dt}: T={T} changes the specialisation: {spec(T, dt)} vs {base}")
        for arch in (80, 90):
            ptx = compile_like_jit(fn, base, arch=arch)
            if dt == torch.float32 and "ld.global.v4" not in ptx:
                sys.exit(f"sm_{arch} {name} {dt}: aligned loads are not vectorised")
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_gpu_targets():
    """The interpreter does not type-check like the compiler: compile both kernels to sm_80/sm_90
    cubins as the JIT would specialise them (Triton's binder and bundled ptxas, no GPU needed):
    the batch length changes no specialisation, and aligned fp32 rows use 128-bit loads."""
    run_gpu_compile_script(_AOT_SCRIPT, "the patchify kernels")


def test_per_batch_arguments_are_not_specialised():
    import inspect

    from fastbci.kernels import patchify as K

    for fn, listed in ((K._patchify_fwd_kernel, K.FWD_PER_BATCH_ARGS),
                       (K._patchify_bwd_kernel, K.BWD_PER_BATCH_ARGS)):
        params = inspect.signature(getattr(fn, "fn", fn)).parameters
        assert all(a in params for a in listed), f"{listed} vs parameters {list(params)}"
        assert non_specialised(fn) == set(listed), (sorted(non_specialised(fn)), listed)
        for a in listed:
            assert str(params[a].annotation) in ("tl.int32", "tl.int64"), (a, params[a].annotation)
