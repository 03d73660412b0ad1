"""Patching op: (B, T, C) -> (B, P, size * C) sliding time windows (docs/recipe.md section 4,
``fastbci.reference.patchify_ref``), with autograd. ``impl="fused"``: the Triton kernels of
``fastbci.kernels.patchify`` as the custom ops ``fastbci::patchify_windows`` / ``patchify_fold``
(opaque to torch.compile; each is the other's gradient); ``"reference"``: unfold + permute.
Details: docs/internals.md, "The fused ops".
"""
from __future__ import annotations

import torch

from fastbci.ops._triton import load_kernels
from fastbci.ops.dispatch import check_impl, resolve
from fastbci.reference import patchify_ref
from fastbci.reference.layers import patch_input_lengths

__all__ = ["patchify", "Patchify", "patch_input_lengths"]


def _kernels():
    """The Triton launchers, imported lazily (the reference path works without Triton)."""
    return load_kernels("patchify", "fastbci.ops.patchify")


# The fused kernels are registered as torch custom ops (namespace ``fastbci``, beside the C++
# day projection): opaque to torch.compile (no graph break, no tracing into the launcher), with
# fake implementations for shape propagation and autograd registered below. Each op's gradient is
# the other op, so double backward works too.
@torch.library.custom_op("fastbci::patchify_windows", mutates_args=())
def _windows_op(x: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """Fused forward: (B, T, C), any strides -> contiguous (B, P, size * C)."""
    return _kernels().patchify_forward(x, size, stride)


@_windows_op.register_fake
def _(x, size, stride):
    B, T, C = x.shape
    return x.new_empty((B, (T - size) // stride + 1, size * C))


@torch.library.custom_op("fastbci::patchify_fold", mutates_args=())
def _fold_op(dy: torch.Tensor, T: int, size: int, stride: int) -> torch.Tensor:
    """Fused fold: (B, P, size * C), any strides -> contiguous (B, T, C), overlaps summed."""
    return _kernels().patchify_backward(dy, T, size, stride)


@_fold_op.register_fake
def _(dy, T, size, stride):
    B, _, N = dy.shape
    return dy.new_empty((B, T, N // size))


def _windows_setup(ctx, inputs, output):
    x, size, stride = inputs
    ctx.geometry = (x.shape[1], size, stride)


def _windows_backward(ctx, dy):
    T, size, stride = ctx.geometry
    return _fold_op(dy, T, size, stride), None, None


def _fold_setup(ctx, inputs, output):
    _, _, size, stride = inputs
    ctx.geometry = (size, stride)


def _fold_backward(ctx, ddx):
    size, stride = ctx.geometry
    return _windows_op(ddx, size, stride), None, None, None


_windows_op.register_autograd(_windows_backward, setup_context=_windows_setup)
_fold_op.register_autograd(_fold_backward, setup_context=_fold_setup)


def _check_args(x, size, stride, impl) -> None:
    where = "fastbci.ops.patchify"
    check_impl(impl, where)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    for name, v in (("size", size), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{where}: {name} must be an int, got {v!r} ({type(v).__name__})")
        if v <= 0:
            raise ValueError(f"{where}: {name} must be positive, got {v}")
    if x.dim() != 3:
        raise ValueError(f"{where}: x must be (B, T, C), got shape {tuple(x.shape)}")
    if x.shape[1] < size:
        raise ValueError(f"{where}: needs at least size={size} time steps, got T={x.shape[1]} "
                         f"(x of shape {tuple(x.shape)}); pad or drop trials shorter than "
                         f"the patch")


def patchify(x: torch.Tensor, size: int = 14, stride: int = 4, impl: str = "auto") -> torch.Tensor:
    """Sliding time windows: ``x`` (B, T, C) -> (B, P, size * C), ``P = (T - size) // stride + 1``.

    Element ``[b, p, k * C + c]`` is ``x[b, stride * p + k, c]``. Differentiable; the gradient
    adds the overlapping windows back. ``x`` may have any strides. The fused output is a new
    contiguous tensor of ``x``'s dtype.

    Raises ValueError/TypeError for a non-3-D input, non-positive or non-int ``size``/``stride``,
    ``T < size`` or an unknown ``impl``; RuntimeError for ``impl="fused"`` on a CPU tensor
    without the Triton interpreter.
    """
    _check_args(x, size, stride, impl)
    if resolve("patchify", x, impl) == "reference":
        y = patchify_ref(x, size, stride)
        # inside torch.compile a view with overlapping windows must not leave the graph: when
        # it is a graph output (e.g. before the eager GRU), AOTAutograd (torch 2.13) lays the
        # incoming gradient out with the output's overlapping strides and loses its overlaps
        return y.contiguous() if torch.compiler.is_compiling() else y
    return _windows_op(x, size, stride)


class Patchify(torch.nn.Module):
    """Module form of :func:`patchify` (no parameters)."""

    def __init__(self, size: int = 14, stride: int = 4, impl: str = "auto"):
        super().__init__()
        check_impl(impl, "Patchify")
        for name, v in (("size", size), ("stride", stride)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"Patchify: {name} must be a positive int, got {v!r}")
        self.size, self.stride, self.impl = size, stride, impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x, self.size, self.stride, self.impl)

    def extra_repr(self) -> str:
        return f"size={self.size}, stride={self.stride}, impl={self.impl!r}"
