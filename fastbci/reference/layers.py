"""Reference (pure PyTorch) day layer and patching, with the official semantics (docs/recipe.md section 4).

These are the contract the fused ops (``fastbci.ops.day_projection``, ``fastbci.ops.patchify``)
are tested against. They run on any device and are differentiable through autograd.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from fastbci import philox


def softsign(x: torch.Tensor) -> torch.Tensor:
    """The official day-layer activation ``x / (1 + |x|)``."""
    return x / (1 + x.abs())


def _check_day_inputs(x, day_idx, weight, bias):
    if x.dim() != 3:
        raise ValueError(f"day layer input must be (B, T, C), got shape {tuple(x.shape)}")
    if day_idx.dim() != 1 or day_idx.shape[0] != x.shape[0]:
        raise ValueError(f"day_idx must be (B,) = ({x.shape[0]},), got shape {tuple(day_idx.shape)}")
    if weight.dim() != 3 or weight.shape[1] != x.shape[2]:
        raise ValueError(f"weight must be (D, C_in={x.shape[2]}, C_out), got {tuple(weight.shape)}")
    if bias.shape != (weight.shape[0], weight.shape[2]):
        raise ValueError(f"bias must be (D, C_out) = {(weight.shape[0], weight.shape[2])}, "
                         f"got {tuple(bias.shape)}")
    if day_idx.numel() and (int(day_idx.min()) < 0 or int(day_idx.max()) >= weight.shape[0]):
        raise ValueError(f"day_idx values must index the {weight.shape[0]} stacked days, "
                         f"got range [{int(day_idx.min())}, {int(day_idx.max())}]")


def day_projection_ref(x: torch.Tensor, day_idx: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor, dropout_p: float = 0.0, seed: int = 0,
                       step: int = 0) -> torch.Tensor:
    """``dropout(softsign(x[b] @ weight[day_idx[b]] + bias[day_idx[b]]))`` with a Philox mask.

    x: (B, T, C_in); day_idx: (B,) int, indices into the stacked ``weight`` (D, C_in, C_out) and
    ``bias`` (D, C_out) (only the days present in the batch are stacked, so absent days get no
    gradient). Dropout keeps an element when the DROPOUT-stream uniform at
    ``(b * T + t) * C_out + c`` is ``>= dropout_p`` and scales it by ``1 / (1 - dropout_p)``;
    ``dropout_p == 0`` means no dropout (evaluation).
    """
    _check_day_inputs(x, day_idx, weight, bias)
    day_idx = day_idx.long()
    y = torch.einsum("btd,bdk->btk", x, weight[day_idx]) + bias[day_idx].unsqueeze(1)
    y = softsign(y)
    if dropout_p > 0:
        mask = philox.dropout_mask(tuple(y.shape), dropout_p, seed, step, device=y.device)
        y = y * mask.to(y.dtype)
    return y


def day_layer_official(x: torch.Tensor, day_idx: torch.Tensor,
                       day_weights: Sequence[torch.Tensor], day_biases: Sequence[torch.Tensor],
                       dropout_p: float = 0.0, training: bool = False) -> torch.Tensor:
    """The official formulation: one (C, C) matrix stacked per TRIAL, batched einsum, softsign,
    ``torch.nn.functional.dropout`` from torch's global generator (official draw order).

    ``day_weights[d]`` is (C_in, C_out), ``day_biases[d]`` is (1, C_out), ``day_idx`` holds day
    indices into those lists.
    """
    if x.dim() != 3:
        raise ValueError(f"day layer input must be (B, T, C), got shape {tuple(x.shape)}")
    if len(day_weights) != len(day_biases):
        raise ValueError(f"{len(day_weights)} day weights but {len(day_biases)} day biases")
    days = [int(i) for i in day_idx]
    if len(days) != x.shape[0]:
        raise ValueError(f"day_idx has {len(days)} entries for a batch of {x.shape[0]} trials")
    bad = [d for d in days if not 0 <= d < len(day_weights)]
    if bad:
        raise ValueError(f"day indices {sorted(set(bad))} are outside the {len(day_weights)} days")
    w = torch.stack([day_weights[d] for d in days], dim=0)
    b = torch.cat([day_biases[d] for d in days], dim=0).unsqueeze(1)
    y = softsign(torch.einsum("btd,bdk->btk", x, w) + b)
    return F.dropout(y, p=dropout_p, training=training)


def n_patches(T: int, size: int, stride: int) -> int:
    """Number of sliding windows ``(T - size) // stride + 1`` (a ValueError when T < size)."""
    if size <= 0 or stride <= 0:
        raise ValueError(f"patch size and stride must be positive, got {size}, {stride}")
    if T < size:
        raise ValueError(f"patching needs at least patch_size={size} time steps, got T={T}")
    return (T - size) // stride + 1


def patchify_ref(x: torch.Tensor, size: int = 14, stride: int = 4) -> torch.Tensor:
    """(B, T, C) -> (B, P, size * C) sliding windows, time-major inside a window.

    Window p holds steps ``stride * p .. stride * p + size - 1``; element ``[k * C + c]`` of a
    window is step ``stride * p + k``, channel ``c``; P = (T - size) // stride + 1.
    """
    if x.dim() != 3:
        raise ValueError(f"patchify input must be (B, T, C), got shape {tuple(x.shape)}")
    if size <= 0 or stride <= 0:
        raise ValueError(f"patch size and stride must be positive, got {size}, {stride}")
    B, T, C = x.shape
    if T < size:
        raise ValueError(f"patchify needs at least patch_size={size} time steps, got T={T}")
    w = x.unfold(1, size, stride)  # (B, P, C, size)
    return w.permute(0, 1, 3, 2).reshape(B, w.shape[1], size * C)


def patch_input_lengths(n_time_steps: torch.Tensor, size: int = 14, stride: int = 4) -> torch.Tensor:
    """Official CTC input lengths: int32 of ``(n - size) / stride + 1`` computed in floating
    point; without patching (``size == 0``) the lengths are ``n`` itself (the official formula
    divides by zero there)."""
    if size == 0:
        return n_time_steps.to(torch.int32)
    return ((n_time_steps.to(torch.float32) - size) / stride + 1).to(torch.int32)
