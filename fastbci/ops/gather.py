"""The padded gather as one op: the zero-padded ``(B, t_max, C)`` batch of whole trials out of a
packed split (``fastbci.reference.gather_padded_ref``). ``impl="fused"`` is the extension's
``fastbci::gather_padded`` (CPU: one memcpy of each trial's contiguous rows and a memset of its
padding, over the intra-op threads), ``"reference"`` one pure-PyTorch index. Registered the
extension-cpp way: the schema and the CPU kernel in csrc/gather.cpp, the fake (shape) kernel
here, checked by ``torch.library.opcheck`` in the tests."""
from __future__ import annotations

import torch

from fastbci.ops import _ext
from fastbci.ops.dispatch import resolve
from fastbci.reference import gather_padded_ref

__all__ = ["gather_padded"]

if _ext.available():

    @torch.library.register_fake("fastbci::gather_padded")
    def _gather_fake(packed, offsets, lengths, rows, t_max):
        torch._check(packed.dim() == 2, lambda: f"packed must be (N, C), got {tuple(packed.shape)}")
        return packed.new_empty((rows.shape[0], t_max, packed.shape[1]))

    @torch.library.register_fake("fastbci::gather_padded.out")
    def _gather_out_fake(packed, offsets, lengths, rows, t_max, *, out):
        return None


def _check(packed, offsets, lengths, rows, t_max) -> None:
    where = "gather_padded"
    if not isinstance(packed, torch.Tensor) or packed.dim() != 2:
        desc = tuple(packed.shape) if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ValueError(f"{where}: packed must be a (N_total, C) tensor, got {desc}")
    for name, t in (("offsets", offsets), ("lengths", lengths), ("rows", rows)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.is_floating_point() \
                or t.is_complex() or t.dtype == torch.bool:
            desc = f"shape {tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) \
                else type(t).__name__
            raise ValueError(f"{where}: {name} must be a 1-D integer tensor, got {desc}")
    if offsets.shape[0] != lengths.shape[0] + 1:
        raise ValueError(f"{where}: offsets must have n + 1 = {lengths.shape[0] + 1} entries for "
                         f"the {lengths.shape[0]} trials of lengths, got {offsets.shape[0]}")
    if isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 0:
        raise ValueError(f"{where}: t_max must be an integer >= 0, got {t_max!r}")


def gather_padded(packed: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor,
                  rows: torch.Tensor, t_max: int, *, out: torch.Tensor | None = None,
                  impl: str = "auto") -> torch.Tensor:
    """The trials ``rows`` of a packed split, zero-padded to ``t_max`` steps: ``(B, t_max, C)``.

    Args:
        packed: ``(N_total, C)`` features, trial ``r`` at rows ``offsets[r] .. offsets[r] +
            lengths[r]`` (any dtype).
        offsets, lengths: ``(n + 1,)`` and ``(n,)`` integer tensors; rows: ``(B,)`` store rows.
        t_max: the padded length; no trial of ``rows`` may be longer.
        out: a contiguous ``(B, t_max, C)`` tensor of ``packed``'s dtype and device to write into
            (a reused buffer); returned.
        impl: ``"auto"`` (the extension on the CPU where it is built), ``"fused"`` or
            ``"reference"`` (:mod:`fastbci.ops.dispatch`).
    """
    _check(packed, offsets, lengths, rows, t_max)
    if resolve("gather", packed, impl) == "reference":
        y = gather_padded_ref(packed, offsets, lengths, rows, t_max)
        return y if out is None else out.copy_(y)
    idx = [t.to("cpu", torch.int64).contiguous() for t in (offsets, lengths, rows)]
    src = packed.contiguous()
    if out is None:
        return torch.ops.fastbci.gather_padded(src, *idx, t_max)
    torch.ops.fastbci.gather_padded.out(src, *idx, t_max, out=out)
    return out
