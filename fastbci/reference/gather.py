"""Reference (pure PyTorch) padded gather: the zero-padded batch of whole trials out of a packed
split, the layout of the official batches (features padded with zeros to the longest trial)."""
from __future__ import annotations

import torch


def gather_padded_ref(packed: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor,
                      rows: torch.Tensor, t_max: int) -> torch.Tensor:
    """``out[b, :lengths[rows[b]]] = packed[offsets[r] : offsets[r] + lengths[r]]`` and zeros
    after, for ``out`` of shape ``(B, t_max, C)`` on ``packed``'s device and dtype.

    Index tensors may live on the CPU or on ``packed``'s device. A trial longer than ``t_max``
    is an error where the lengths are on the host (read there, never on a device)."""
    dev = packed.device
    if rows.device.type == "cpu" and lengths.device.type == "cpu" and rows.numel():
        longest = int(lengths[rows.long()].max())
        if longest > t_max:
            raise ValueError(f"gather_padded: a trial of the batch has {longest} steps, more than "
                             f"t_max = {t_max}")
    r = rows.to(dev).long()
    start = offsets.to(dev).long()[r]
    n = lengths.to(dev).long()[r]
    t = torch.arange(t_max, device=dev)
    present = t[None, :] < n[:, None]
    idx = torch.where(present, start[:, None] + t[None, :], torch.zeros_like(start)[:, None])
    x = packed[idx.reshape(-1)].reshape(r.shape[0], t_max, packed.shape[1])
    return torch.where(present[:, :, None], x, torch.zeros((), dtype=x.dtype, device=dev))
