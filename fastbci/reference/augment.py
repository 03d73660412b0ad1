"""Reference training augmentations and the full transform step (docs/recipe.md section 3).

Static gain, white noise, constant offset, random walk and random cut in the official order on
the zero-padded batch, then Gaussian smoothing, from one of two random sources: ``rng="torch"``
(the official draws in the official order, identical results with the generators in the same
state) or ``rng="philox"`` (the counter-based streams the fused kernel matches). Inputs are never
modified in place; everything is float32. The step-by-step contract is in docs/internals.md,
"The reference transform step".
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from fastbci import philox
from fastbci.reference.smoothing import gaussian_taps, smooth_ref

#: Keys of ``dataset.data_transforms`` read by the training augmentations.
AUGMENT_KEYS = ("static_gain_std", "white_noise_std", "constant_offset_std", "random_walk_std",
                "random_walk_axis", "random_cut")
#: Keys read by the smoothing (training and validation).
SMOOTH_KEYS = ("smooth_data", "smooth_kernel_std", "smooth_kernel_size")

TRAIN_MODES = ("train",)
EVAL_MODES = ("val", "eval", "test")
RNG_KINDS = ("torch", "philox")


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _get(transforms: Mapping, key: str, where: str):
    if key not in transforms:
        raise KeyError(f"{where}: transforms (dataset.data_transforms) lacks the key {key!r}; "
                       f"it has {sorted(transforms)}")
    return transforms[key]


def _std(transforms: Mapping, key: str, where: str) -> float:
    v = _get(transforms, key, where)
    if not _is_number(v) or not math.isfinite(float(v)) or float(v) < 0:
        raise ValueError(f"{where}: dataset.data_transforms.{key} must be a finite number >= 0, "
                         f"got {v!r}")
    return float(v)


def _check_features(features, n_time_steps, where: str) -> None:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{where}: features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 3:
        raise ValueError(f"{where}: features must be (B, T, C), got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"{where}: features must be floating point, got {features.dtype}")
    if not isinstance(n_time_steps, torch.Tensor):
        raise TypeError(f"{where}: n_time_steps must be a torch.Tensor of shape (B,), got "
                        f"{type(n_time_steps).__name__}")
    if n_time_steps.dim() != 1 or n_time_steps.shape[0] != features.shape[0]:
        raise ValueError(f"{where}: n_time_steps must have shape (B,) = ({features.shape[0]},), "
                         f"got {tuple(n_time_steps.shape)}")


def _check_rng(rng: str, seed, where: str) -> None:
    if rng not in RNG_KINDS:
        raise ValueError(f"{where}: rng must be one of {RNG_KINDS}, got {rng!r}")
    if rng == "philox" and (not _is_int(seed) or not 0 <= int(seed) < (1 << 64)):
        raise ValueError(f"{where}: the philox seed must be an integer in [0, 2**64), got {seed!r}")


def _random_walk_axis(transforms: Mapping, where: str) -> int:
    axis = _get(transforms, "random_walk_axis", where)
    if not _is_int(axis) or not -3 <= int(axis) <= 2:
        raise ValueError(f"{where}: dataset.data_transforms.random_walk_axis must be an axis of "
                         f"the (B, T, C) batch, an integer in [-3, 2], got {axis!r}")
    return int(axis)


def _random_cut_max(transforms: Mapping, where: str) -> int:
    v = _get(transforms, "random_cut", where)
    if not _is_int(v) or int(v) < 0:
        raise ValueError(f"{where}: dataset.data_transforms.random_cut must be an integer >= 0, "
                         f"got {v!r}")
    return int(v)


# ---------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------
def _draw(rng: str, shape: tuple, stream: int, seed: int, step: int,
          device: torch.device) -> torch.Tensor:
    """Standard normals of ``shape`` (float32): torch's global generator, or the Philox normal
    contract (four normals per counter, row-major element index) of ``stream``."""
    if rng == "torch":
        return torch.randn(shape, dtype=torch.float32, device=device)
    return philox.normal_like_shape(shape, seed, step, stream, device=device)


def augment_ref(features: torch.Tensor, n_time_steps: torch.Tensor, transforms: Mapping, *,
                rng: str = "torch", seed: int = 0, step: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The training augmentations alone (no smoothing), in the official order.

    Args:
        features: (B, T_max, C) zero-padded batch, any floating dtype, any strides.
        n_time_steps: (B,) true lengths (any integer or float dtype).
        transforms: the config's ``dataset.data_transforms`` dict.
        rng: ``"torch"`` (official global generators) or ``"philox"`` (``seed``, ``step``).
        seed, step: the Philox key and step (``rng="philox"`` only; ``dataset.seed`` and the
            0-based training batch index in the trainer).

    Returns:
        ``(x, n_time_steps - cut, cut)``: x is float32 (B, T_max - cut, C) (possibly a view of a
        new tensor, never of ``features``), ``cut`` a Python int.
    """
    where = "augment_ref"
    _check_features(features, n_time_steps, where)
    _check_rng(rng, seed, where)
    gain_std = _std(transforms, "static_gain_std", where)
    noise_std = _std(transforms, "white_noise_std", where)
    offset_std = _std(transforms, "constant_offset_std", where)
    walk_std = _std(transforms, "random_walk_std", where)
    walk_axis = _random_walk_axis(transforms, where) if walk_std > 0 else None
    cut_max = _random_cut_max(transforms, where)
    if rng == "philox":
        philox.counter_hi(step, 0)  # validates step with a clear message before any work

    B, T, C = features.shape
    device = features.device
    x = features.to(torch.float32)
    with torch.autocast(device_type=device.type, enabled=False):
        if gain_std > 0:
            eye = torch.eye(C, dtype=torch.float32, device=device).expand(B, C, C)
            warp = eye + _draw(rng, (B, C, C), philox.STATIC_GAIN, seed, step, device) * gain_std
            x = torch.matmul(x, warp)
        if noise_std > 0:
            x = x + _draw(rng, (B, T, C), philox.NOISE, seed, step, device) * noise_std
        if offset_std > 0:
            if rng == "torch":
                offset = _draw(rng, (B, 1, C), philox.OFFSET, seed, step, device)
            else:
                offset = _draw(rng, (B, C), philox.OFFSET, seed, step, device).unsqueeze(1)
            x = x + offset * offset_std
        if walk_std > 0:
            steps = _draw(rng, (B, T, C), philox.RANDOM_WALK, seed, step, device) * walk_std
            x = x + torch.cumsum(steps, dim=walk_axis)

    if rng == "torch":
        cut = int(np.random.randint(0, cut_max)) if cut_max > 0 else 0
    else:
        cut = philox.random_cut(cut_max, seed, step)
    if cut >= T:
        raise ValueError(f"{where}: the random cut ({cut}, drawn from [0, random_cut={cut_max})) "
                         f"removes all T={T} time steps of the batch; lower "
                         f"dataset.data_transforms.random_cut below the shortest padded batch")
    if cut > 0:
        x = x[:, cut:, :]
    return x, n_time_steps - cut, cut


# ---------------------------------------------------------------------------------------------
# the whole transform step
# ---------------------------------------------------------------------------------------------
def smoothing_taps(transforms: Mapping, device=None, where: str = "transform_ref") -> torch.Tensor:
    """The official kernel for ``transforms`` (smooth_kernel_std, smooth_kernel_size) on
    ``device`` (CPU when None), with errors naming the config keys."""
    std = _get(transforms, "smooth_kernel_std", where)
    size = _get(transforms, "smooth_kernel_size", where)
    try:
        taps = gaussian_taps(std, size)
    except ValueError as e:
        raise ValueError(f"{where}: dataset.data_transforms.smooth_kernel_std/"
                         f"smooth_kernel_size: {e}") from None
    return taps.to(device) if device is not None else taps


def _smooth_data(transforms: Mapping, where: str) -> bool:
    v = _get(transforms, "smooth_data", where)
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{where}: dataset.data_transforms.smooth_data must be true or false, "
                         f"got {v!r}")
    return bool(v)


def transform_ref(features: torch.Tensor, n_time_steps: torch.Tensor, transforms: Mapping,
                  mode: str = "train", *, rng: str = "torch", seed: int = 0, step: int = 0,
                  taps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The official transform step: augment (``mode="train"`` only), then smooth if
    ``smooth_data`` ('same' padding).

    Args:
        features: (B, T_max, C) zero-padded batch, any floating dtype, any strides.
        n_time_steps: (B,) true lengths.
        transforms: the config's ``dataset.data_transforms`` dict (keys white_noise_std,
            constant_offset_std, random_walk_std, random_walk_axis, static_gain_std, random_cut,
            smooth_kernel_size, smooth_data, smooth_kernel_std).
        mode: ``"train"`` augments then smooths; ``"val"``, ``"eval"`` or ``"test"`` only smooth.
        rng, seed, step: the random source, see :func:`augment_ref`.
        taps: a precomputed kernel (K,) to smooth with; default ``gaussian_taps(smooth_kernel_std,
            smooth_kernel_size)``.

    Returns:
        ``(x, n)``: x float32 (B, T_max - cut, C); n = ``n_time_steps - cut`` in training,
        ``n_time_steps`` itself otherwise. The inputs are never modified.
    """
    where = "transform_ref"
    if mode not in TRAIN_MODES + EVAL_MODES:
        raise ValueError(f"{where}: mode must be one of {TRAIN_MODES + EVAL_MODES}, got {mode!r}")
    _check_features(features, n_time_steps, where)
    smooth = _smooth_data(transforms, where)
    if smooth and taps is None:
        taps = smoothing_taps(transforms, features.device, where)
    if mode == "train":
        x, n, _ = augment_ref(features, n_time_steps, transforms, rng=rng, seed=seed, step=step)
    else:
        _check_rng(rng, seed, where)
        x, n = features.to(torch.float32), n_time_steps
    if smooth:
        x = smooth_ref(x, taps, "same")
    return x, n
