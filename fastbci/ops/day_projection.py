"""The day-specific input projection as one fused op: ``torch.ops.fastbci.day_projection``,
``y = dropout(softsign(x[b] @ weight[day_idx[b]] + bias[day_idx[b]]))`` over the days present in
the batch (stacked by the caller), Philox dropout; the semantics are
:func:`fastbci.reference.day_projection_ref`. ``impl="fused"`` is the C++ (CPU) / CUDA extension
``fastbci._C``, ``"reference"`` pure PyTorch. Details: docs/internals.md, "The fused ops".
"""
from __future__ import annotations

from typing import Sequence

import torch

from fastbci import philox
from fastbci.reference.layers import day_projection_ref

__all__ = ["day_projection", "fused_available", "fused_supports", "stack_present_days"]

_OP_NAME = "fastbci::day_projection"
_BWD_NAME = "fastbci::day_projection_backward"
_IMPLS = ("auto", "fused", "reference")
_BUILD_HINT = ("build it from the fastbci source tree with "
               "`pip install -e . --no-build-isolation` (torch must be installed first; "
               "a CUDA build of torch plus nvcc/CUDA_HOME gives the CUDA kernels too)")

_ext_error: str | None = None
try:  # importing the extension runs its TORCH_LIBRARY registrations
    import fastbci._C  # noqa: F401
except ImportError as e:  # a source checkout that was never built
    _ext_error = f"{type(e).__name__}: {e}"


def fused_available() -> bool:
    """True when the C++ extension ``fastbci._C`` is importable (its CPU kernels always exist)."""
    return _ext_error is None


def _has_kernel(device_type: str) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return (key is not None and fused_available()
            and torch._C._dispatch_has_kernel_for_dispatch_key(_OP_NAME, key))


def fused_supports(x: torch.Tensor) -> bool:
    """True when the fused op has a kernel for x's device and dtype (float64: CPU only)."""
    if not _has_kernel(x.device.type):
        return False
    if x.dtype == torch.float64:
        return x.device.type == "cpu"
    return x.dtype in (torch.float32, torch.bfloat16)


# --------------------------------------------------------------------------- registrations
if fused_available():

    @torch.library.register_fake(_OP_NAME)
    def _day_projection_fake(x, day_idx, weight, bias, dropout_p, seed, step):
        torch._check(x.dim() == 3, lambda: f"x must be (B, T, C_in), got {tuple(x.shape)}")
        torch._check(weight.dim() == 3 and weight.shape[1] == x.shape[2],
                     lambda: f"weight must be (D, C_in, C_out), got {tuple(weight.shape)}")
        return x.new_empty((x.shape[0], x.shape[1], weight.shape[2]))

    @torch.library.register_fake(_BWD_NAME)
    def _day_projection_backward_fake(grad_out, out, x, day_idx, weight, dropout_p, seed, step,
                                      compute_dx):
        grad_x = x.new_empty(x.shape) if compute_dx else x.new_empty((0,))
        return (grad_x, weight.new_empty(weight.shape),
                weight.new_empty((weight.shape[0], weight.shape[2])))

    def _setup_context(ctx, inputs, output):
        x, day_idx, weight, _bias, dropout_p, seed, step = inputs
        ctx.save_for_backward(x, day_idx, weight, output)
        ctx.dropout = (dropout_p, seed, step)

    def _backward(ctx, grad_out):
        x, day_idx, weight, out = ctx.saved_tensors
        need_x, _, need_w, need_b = ctx.needs_input_grad[:4]
        if not (need_x or need_w or need_b):
            return None, None, None, None, None, None, None
        grad_x, grad_w, grad_b = torch.ops.fastbci.day_projection_backward(
            grad_out, out, x, day_idx, weight, *ctx.dropout, bool(need_x))
        return (grad_x if need_x else None, None, grad_w if need_w else None,
                grad_b if need_b else None, None, None, None)

    torch.library.register_autograd(_OP_NAME, _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- checks
def _fail(msg: str, exc=ValueError):
    raise exc(f"day_projection: {msg}")


def _check_inputs(x, day_idx, weight, bias, dropout_p, seed, step):
    for name, t in (("x", x), ("day_idx", day_idx), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    if x.dim() != 3:
        _fail(f"x must be (B, T, C_in), got shape {tuple(x.shape)}")
    B, T, C_in = x.shape
    if not x.is_floating_point():
        _fail(f"x must be floating point, got {x.dtype}", TypeError)
    if day_idx.dim() != 1 or day_idx.shape[0] != B:
        _fail(f"day_idx must be (B,) = ({B},), got shape {tuple(day_idx.shape)}")
    if day_idx.dtype not in (torch.int32, torch.int64):
        _fail(f"day_idx must be int64 or int32, got {day_idx.dtype}", TypeError)
    if weight.dim() != 3 or weight.shape[1] != C_in:
        _fail(f"weight must be (D, C_in={C_in}, C_out), got shape {tuple(weight.shape)}")
    D, _, C_out = weight.shape
    if tuple(bias.shape) != (D, C_out):
        _fail(f"bias must be (D, C_out) = ({D}, {C_out}), got shape {tuple(bias.shape)}")
    if B > 0 and D == 0:
        _fail(f"weight holds no days (D = 0) but the batch has {B} trials")
    devices = {t.device for t in (x, day_idx, weight, bias)}
    if len(devices) != 1:
        _fail(f"x, day_idx, weight and bias must be on one device, got x on {x.device}, "
              f"day_idx on {day_idx.device}, weight on {weight.device}, bias on {bias.device}")
    if not (weight.is_floating_point() and bias.is_floating_point()):
        _fail(f"weight and bias must be floating point, got {weight.dtype} and {bias.dtype}",
              TypeError)
    if not 0.0 <= float(dropout_p) < 1.0:
        _fail(f"dropout_p must be in [0, 1), got {dropout_p}")
    if not 0 <= int(seed) < 1 << 64:
        _fail(f"seed must be in [0, 2**64), got {seed}")
    if not 0 <= int(step) <= philox.MAX_STEP:
        _fail(f"step must be in [0, {philox.MAX_STEP}], got {step}")
    if dropout_p > 0 and B * T * C_out > philox.MAX_INDEX + 1:
        _fail(f"the dropout mask indexes elements with 32 bits but the output has "
              f"{B * T * C_out} elements")
    if day_idx.device.type == "cpu" and B > 0:
        lo, hi = int(day_idx.min()), int(day_idx.max())
        if lo < 0 or hi >= D:
            _fail(f"day_idx values must index the {D} stacked days, got range [{lo}, {hi}]")


def _check_fused_dtypes(x, weight, bias):
    if x.dtype == torch.float64:
        if x.device.type != "cpu":
            _fail(f"float64 x is supported on CPU only (got {x.device}); use float32 or "
                  "bfloat16, or impl='reference'", TypeError)
        want = torch.float64
    elif x.dtype in (torch.float32, torch.bfloat16):
        want = torch.float32
    else:
        _fail(f"the fused op takes float32, bfloat16 or float64 (CPU) x, got {x.dtype}; "
              "use impl='reference'", TypeError)
    if weight.dtype != want or bias.dtype != want:
        _fail(f"the fused op needs {want} weight and bias for {x.dtype} x (cast inside), got "
              f"{weight.dtype} and {bias.dtype}", TypeError)


def _seed_as_int64(seed: int) -> int:
    """The 64-bit Philox key as the signed int64 the op schema carries (two's complement)."""
    seed = int(seed)
    return seed - (1 << 64) if seed >= 1 << 63 else seed


# --------------------------------------------------------------------------- public API
def day_projection(x: torch.Tensor, day_idx: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor, dropout_p: float = 0.0, seed: int = 0, step: int = 0,
                   impl: str = "auto") -> torch.Tensor:
    """``dropout(softsign(x[b] @ weight[day_idx[b]] + bias[day_idx[b]]))``, differentiable.

    Args:
        x: (B, T, C_in) float32 / bfloat16 (float64 on CPU).
        day_idx: (B,) int64 or int32, indices into the stacked days of ``weight`` / ``bias``.
        weight: (D, C_in, C_out) float32 (float64 with float64 x), the present days' matrices.
        bias: (D, C_out), same dtype as weight.
        dropout_p: dropout probability in [0, 1); 0 disables dropout (evaluation).
        seed, step: the Philox key (in [0, 2**64)) and the training step; the mask of element
            ``(b * T + t) * C_out + c`` is a pure function of (seed, step, element).
        impl: ``"auto"``, ``"fused"`` (the extension; an error when it is missing) or
            ``"reference"``.

    Returns:
        (B, T, C_out) in x's dtype.
    """
    if impl not in _IMPLS:
        _fail(f"impl must be one of {_IMPLS}, got {impl!r}")
    _check_inputs(x, day_idx, weight, bias, dropout_p, seed, step)
    if impl == "auto":
        impl = "fused" if fused_supports(x) else "reference"
    if impl == "reference":
        return day_projection_ref(x, day_idx, weight, bias, float(dropout_p), int(seed), int(step))
    if not fused_available():
        raise RuntimeError(f"day_projection: impl='fused' needs the C++ extension fastbci._C, "
                           f"which could not be imported ({_ext_error}); {_BUILD_HINT}")
    if not _has_kernel(x.device.type):
        raise RuntimeError(
            f"day_projection: impl='fused' has no kernel for device '{x.device.type}' in this "
            f"build of fastbci._C (CUDA kernels are compiled only when torch has CUDA and nvcc "
            f"is found, with FASTBCI_SKIP_CUDA_BUILD unset); {_BUILD_HINT}, "
            "or use impl='reference'")
    _check_fused_dtypes(x, weight, bias)
    return torch.ops.fastbci.day_projection(x, day_idx, weight, bias, float(dropout_p),
                                            _seed_as_int64(seed), int(step))


def stack_present_days(day_idx: torch.Tensor, day_weights: Sequence[torch.Tensor],
                       day_biases: Sequence[torch.Tensor]):
    """Stack the parameters of the days present in a batch, official per-day layout in.

    ``day_weights[d]`` is (C_in, C_out) and ``day_biases[d]`` is (C_out,) or (1, C_out) (the
    official shapes). Returns ``(local_idx, weight, bias)``: ``weight`` (D, C_in, C_out) and
    ``bias`` (D, C_out) stack the present days in increasing day order and ``local_idx`` (B,)
    int64 indexes into them, ready for :func:`day_projection`. Days absent from the batch are
    not part of the graph, so they get no gradient (as in the official model). This reads
    ``day_idx`` on the host (one synchronisation when it lives on a GPU).
    """
    if day_idx.dim() != 1:
        _fail(f"day_idx must be (B,), got shape {tuple(day_idx.shape)}")
    n_days = len(day_weights)
    if len(day_biases) != n_days:
        _fail(f"got {n_days} day weights but {len(day_biases)} day biases")
    days = day_idx.detach().to("cpu", torch.int64)
    if days.numel() and (int(days.min()) < 0 or int(days.max()) >= n_days):
        _fail(f"day_idx values must lie in [0, {n_days}), got range "
              f"[{int(days.min())}, {int(days.max())}]")
    present, local = torch.unique(days, sorted=True, return_inverse=True)
    if present.numel() == 0:
        if n_days == 0:
            _fail("an empty batch and no day parameters: the channel counts are unknown")
        w0, b0 = day_weights[0], day_biases[0]
        return (local.to(day_idx.device), w0.new_empty((0, *w0.shape)),
                b0.new_empty((0, b0.numel())))
    weight = torch.stack([day_weights[int(d)] for d in present], dim=0)
    bias = torch.stack([day_biases[int(d)].reshape(-1) for d in present], dim=0)
    return local.to(day_idx.device), weight, bias
