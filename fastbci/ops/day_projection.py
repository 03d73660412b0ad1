"""The day-specific input projection as one fused op: ``torch.ops.fastbci.day_projection``,
``y = dropout(softsign(x[b] @ weight[day_idx[b]] + bias[day_idx[b]]))`` over the days present in
the batch (stacked by the caller), Philox dropout; the semantics are
:func:`fastbci.reference.day_projection_ref`. ``impl="fused"`` is the C++ (CPU) / CUDA extension
``fastbci._C``, ``"reference"`` pure PyTorch. Details: docs/internals.md, "The fused ops".
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from fastbci import philox
from fastbci.devices import to_device
from fastbci.ops import _ext
from fastbci.ops.dispatch import check_impl, resolve
from fastbci.reference.layers import day_projection_ref

__all__ = ["day_projection", "fused_available", "fused_supports", "present_day_index", "present_days",
           "stack_present_days"]

_OP_NAME = "fastbci::day_projection"
_BWD_NAME = "fastbci::day_projection_backward"


def fused_available() -> bool:
    """True when the C++ extension ``fastbci._C`` is importable (its CPU kernels always exist)."""
    return _ext.available()


def fused_supports(x: torch.Tensor) -> bool:
    """True when the fused op has a kernel for x's device and dtype (float64: CPU only): what
    ``impl="auto"`` runs."""
    return resolve("day_projection", x, "auto") == "fused"


# --------------------------------------------------------------------------- registrations
if _ext.available():

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


def present_days(days: np.ndarray) -> tuple[list[int], np.ndarray]:
    """The distinct days of a batch (sorted) and each trial's position among them (int64)."""
    days = np.asarray(days, dtype=np.int64)
    present = np.unique(days)
    return [int(d) for d in present], np.searchsorted(present, days).astype(np.int64)


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
    if not 0 <= _as_int(seed) < 1 << 64:
        _fail(f"seed must be in [0, 2**64), got {seed}")
    if not 0 <= _as_int(step) <= philox.MAX_STEP:
        _fail(f"step must be in [0, {philox.MAX_STEP}], got {step}")
    if dropout_p > 0 and B * T * C_out > philox.MAX_INDEX + 1:
        _fail(f"the dropout mask indexes elements with 32 bits but the output has "
              f"{B * T * C_out} elements")
    # the data check reads day_idx: CPU tensors only (never a device sync), and only outside
    # torch.compile (inside a graph the C++ CPU op checks the range itself; CUDA: NaN trials)
    if day_idx.device.type == "cpu" and B > 0 and not torch.compiler.is_compiling():
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


def _as_int(v):
    """``v`` as a Python int (numpy integers accepted); a ``torch.SymInt`` (torch.compile's
    symbol for a value that changes between calls, e.g. the step) stays as it is."""
    return v if isinstance(v, torch.SymInt) else int(v)


def _seed_as_int64(seed: int) -> int:
    """The 64-bit Philox key as the signed int64 the op schema carries (two's complement)."""
    seed = _as_int(seed)
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
    check_impl(impl, "day_projection")
    _check_inputs(x, day_idx, weight, bias, dropout_p, seed, step)
    if resolve("day_projection", x, impl) == "reference":
        return day_projection_ref(x, day_idx, weight, bias, float(dropout_p), int(seed), int(step))
    _check_fused_dtypes(x, weight, bias)
    return torch.ops.fastbci.day_projection(x, day_idx, weight, bias, float(dropout_p),
                                            _seed_as_int64(seed), _as_int(step))


def _check_present(days_present, n_days: int, where: str) -> list[int]:
    """``days_present`` as a list of distinct day indices in ``[0, n_days)``, or a clear error."""
    try:
        present = [int(d) for d in days_present]
    except (TypeError, ValueError):
        raise TypeError(f"{where}: days_present must be a sequence of day indices, got "
                        f"{days_present!r}") from None
    if not present:
        raise ValueError(f"{where}: the batch holds no trial (days_present is empty)")
    if len(set(present)) != len(present):
        raise ValueError(f"{where}: days_present has repeated days: {present}")
    bad = [d for d in present if not 0 <= d < n_days]
    if bad:
        raise ValueError(f"{where}: day indices {bad} are outside [0, {n_days - 1}] "
                         f"({n_days} day layers)")
    return present


def _check_local(day_idx: torch.Tensor, present: list[int], local_day_idx, where: str):
    """A caller's ``local_day_idx`` on day_idx's device, checked against ``day_idx`` there."""
    if not isinstance(local_day_idx, torch.Tensor) or local_day_idx.dim() != 1 \
            or local_day_idx.shape[0] != day_idx.shape[0]:
        shape = tuple(local_day_idx.shape) if isinstance(local_day_idx, torch.Tensor) \
            else type(local_day_idx).__name__
        raise ValueError(f"{where}: local_day_idx must be a ({day_idx.shape[0]},) tensor, "
                         f"got {shape}")
    if local_day_idx.dtype.is_floating_point or local_day_idx.dtype == torch.bool \
            or local_day_idx.is_complex():
        raise TypeError(f"{where}: local_day_idx must be an integer tensor, got "
                        f"{local_day_idx.dtype}")
    local = local_day_idx.to(device=day_idx.device, dtype=torch.long, non_blocking=True)
    present_t = to_device(torch.tensor(present, dtype=torch.long), day_idx.device)
    in_range = (local >= 0) & (local < len(present))
    agrees = present_t[local.clamp(0, len(present) - 1)] == day_idx
    try:  # asynchronous on CUDA; on the CPU the assertion runs at once
        torch._assert_async((in_range & agrees).all(),
                            f"{where}: local_day_idx does not map day_idx onto "
                            f"days_present={present}")
    except RuntimeError:
        if day_idx.device.type != "cpu":
            raise
        raise ValueError(f"{where}: local_day_idx {local.tolist()} does not map day_idx "
                         f"{day_idx.tolist()} onto days_present={present} (entry i must be "
                         "the position of day_idx[i] in days_present)") from None
    return local


def present_day_index(day_idx: torch.Tensor, n_days: int, days_present: Sequence[int] | None = None,
                      local_day_idx: torch.Tensor | None = None, where: str = "day_projection"
                      ) -> tuple[list[int], torch.Tensor]:
    """The days present in a batch (host list) and each trial's position among them (int64, on
    ``day_idx``'s device): how the day layer maps global day indices onto the stack of the
    present days' parameters (only those are stacked, so an absent day gets no gradient).

    * ``days_present`` and ``local_day_idx`` given (e.g. :class:`fastbci.data.batch.Batch`, both
      known on the host): taken as they are, their agreement with ``day_idx`` checked by a device
      assertion (asynchronous on CUDA, no host read);
    * ``days_present`` only: positions through a small lookup table, checked the same way on
      CUDA, on the host for CPU tensors;
    * neither: the distinct days of ``day_idx`` (one host read when it lives on a GPU).

    Not for torch.compile regions (it builds host lists): the model's compiled path indexes
    every day's parameters instead. Raises ValueError/TypeError naming the bad days.
    """
    if local_day_idx is not None:
        if days_present is None:
            raise ValueError(f"{where}: local_day_idx needs days_present (the days its entries "
                             "index)")
        present = _check_present(days_present, n_days, where)
        return present, _check_local(day_idx, present, local_day_idx, where)
    if days_present is None:
        present, local = present_days(day_idx.detach().cpu().numpy())
        _check_present(present, n_days, where)
        return present, to_device(local, day_idx.device)
    present = _check_present(days_present, n_days, where)
    lut = torch.full((n_days,), -1, dtype=torch.long)
    lut[torch.tensor(present, dtype=torch.long)] = torch.arange(len(present))
    local = to_device(lut, day_idx.device)[day_idx.clamp(0, n_days - 1)]
    inside = (day_idx >= 0) & (day_idx < n_days) & (local >= 0)
    if day_idx.device.type == "cpu":
        if not bool(inside.all()):
            missing = sorted(set(day_idx[~inside].tolist()))
            raise ValueError(f"{where}: day_idx holds days {missing} that are not in "
                             f"days_present={present}")
    else:
        torch._assert_async(inside.all(), f"{where}: day_idx holds a day that is not in "
                                          "days_present")
    return present, local


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
    if day_idx.numel() == 0:
        if n_days == 0:
            _fail("an empty batch and no day parameters: the channel counts are unknown")
        w0, b0 = day_weights[0], day_biases[0]
        return (day_idx.to(torch.int64), w0.new_empty((0, *w0.shape)),
                b0.new_empty((0, b0.numel())))
    present, local = present_day_index(day_idx, n_days, where="stack_present_days")
    weight = torch.stack([day_weights[d] for d in present], dim=0)
    bias = torch.stack([day_biases[d].reshape(-1) for d in present], dim=0)
    return local, weight, bias
