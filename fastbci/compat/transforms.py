"""Drop-in replacements for the official transform functions (same names and signatures).

* :func:`gauss_smooth` replaces ``data_augmentations.gauss_smooth``;
* :func:`transform_data` replaces the trainer method ``BrainToTextDecoder_Trainer.transform_data``
  as a free function: pass the trainer's ``transform_args`` (the config's
  ``dataset.data_transforms``) and its device, e.g.
  ``features, n = transform_data(features, n, self.transform_args, 'train', self.device)``.

With torch's and numpy's global generators in the same state, both return what the official
functions return (bit for bit for float32 input outside autocast). Under bfloat16 autocast the
smoothing convolution runs in bf16 exactly as the official one does; the static-gain matmul (off
in the official configuration) stays in float32 here, whereas the official one runs in bf16.

Differences from the official code, all where it fails or surprises:

* the inputs are never modified in place (the official ``transform_data`` adds the noise into the
  caller's ``features`` tensor when static gain is off);
* the static-gain matrix is built on the features' device (the official one mixes a CPU identity
  with device noise and fails on CUDA, docs/recipe.md section 9);
* the kernel is built on the inputs' device; ``device`` must name that device type;
* bad shapes, keys, values, modes or paddings raise errors that say what is wrong.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from fastbci.reference.augment import (
    EVAL_MODES, TRAIN_MODES, _get, _smooth_data, augment_ref,
)
from fastbci.reference.smoothing import gaussian_taps

__all__ = ["gauss_smooth", "transform_data"]

_PADDINGS = ("same", "valid")


def _check_device(device, tensor: torch.Tensor, where: str) -> None:
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{where}: device {device!r} is not a torch device ({e})") from None
    same = dev.type == tensor.device.type and (
        dev.index is None or tensor.device.index is None or dev.index == tensor.device.index)
    if not same:
        raise ValueError(f"{where}: device={device!r} but the features are on {tensor.device}; "
                         f"move the features to {dev} first (the official code needs them there)")


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is active for ``device_type`` (torch >= 2.4 API, older fallbacks)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


def gauss_smooth(inputs: torch.Tensor, device, smooth_kernel_std: float = 2,
                 smooth_kernel_size: int = 100, padding: str = "same") -> torch.Tensor:
    """Gaussian smoothing along time, per channel, as the official ``gauss_smooth``.

    Args:
        inputs: (B, T, C) features.
        device: the device of ``inputs`` (kept for the official signature).
        smooth_kernel_std, smooth_kernel_size: the kernel, see
            :func:`fastbci.reference.gaussian_taps`.
        padding: ``'same'`` (output length T, zero padding) or ``'valid'`` (T - K + 1).

    Returns:
        (B, T_out, C), a permuted view of the convolution output as the official function
        returns. float32 for float32 input; under autocast, the autocast dtype; other floating
        inputs outside autocast are smoothed in their own dtype (the official function raises).
    """
    where = "gauss_smooth"
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{where}: inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() != 3:
        raise ValueError(f"{where}: inputs must be (B, T, C), got shape {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise TypeError(f"{where}: inputs must be floating point, got {inputs.dtype}")
    if padding not in _PADDINGS:
        raise ValueError(f"{where}: padding must be one of {_PADDINGS}, got {padding!r}")
    _check_device(device, inputs, where)
    taps = gaussian_taps(smooth_kernel_std, smooth_kernel_size)
    B, T, C = inputs.shape
    K = taps.numel()
    if padding == "valid" and T < K:
        raise ValueError(f"{where}: 'valid' smoothing needs T >= K, got T={T} time steps and a "
                         f"{K}-tap kernel (std {smooth_kernel_std}, size {smooth_kernel_size})")
    weight = taps.to(inputs.device, non_blocking=True).view(1, 1, K).repeat(C, 1, 1)  # (C, 1, K)
    if inputs.dtype != torch.float32 and not _autocast_on(inputs.device.type):
        weight = weight.to(inputs.dtype)
    out = F.conv1d(inputs.permute(0, 2, 1), weight, padding=padding, groups=C)
    return out.permute(0, 2, 1)


def transform_data(features: torch.Tensor, n_time_steps: torch.Tensor, transform_args: Mapping,
                   mode: str = "train", device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The official trainer's ``transform_data`` step as a free function.

    Args:
        features: (B, T_max, C) zero-padded batch.
        n_time_steps: (B,) true lengths.
        transform_args: the config's ``dataset.data_transforms`` dict.
        mode: ``'train'`` augments (static gain, white noise, constant offset, random walk, random
            cut: torch's global generator, numpy's for the cut) then smooths; ``'val'``,
            ``'eval'`` or ``'test'`` only smooth.
        device: the trainer's device (default: the features' device); the random draws are
            made there, as ``torch.randn(..., device=self.device)`` does in the official code.

    Returns:
        ``(features, n_time_steps)``: the transformed batch (T_max - cut steps) and, in training,
        ``n_time_steps - cut``.
    """
    where = "transform_data"
    if mode not in TRAIN_MODES + EVAL_MODES:
        raise ValueError(f"{where}: mode must be one of {TRAIN_MODES + EVAL_MODES}, got {mode!r}")
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{where}: features must be a torch.Tensor, got {type(features).__name__}")
    _check_device(device, features, where)
    smooth = _smooth_data(transform_args, where)
    if mode == "train":
        features, n_time_steps, _ = augment_ref(features, n_time_steps, transform_args,
                                                rng="torch")
    if smooth:
        features = gauss_smooth(features, features.device,
                                smooth_kernel_std=_get(transform_args, "smooth_kernel_std", where),
                                smooth_kernel_size=_get(transform_args, "smooth_kernel_size",
                                                        where))
    return features, n_time_steps
