"""Reference Gaussian smoothing along time, with the official semantics (docs/recipe.md section 3).

The official trainer smooths every batch (training and validation) with a short Gaussian kernel
applied per channel along time. The kernel is built by filtering a unit impulse of length
``size`` (placed at index ``size // 2``) with ``scipy.ndimage.gaussian_filter1d`` (default
``truncate=4.0``, ``mode='reflect'``) in float32, keeping the taps above 0.01 and normalising them
to sum 1. For ``std=2`` and ``size=100`` that leaves 9 taps::

    0.02763055 0.06628225 0.12383153 0.18017381 0.20416369 0.18017381 ... 0.02763055

The convolution is ``torch.nn.functional.conv1d`` with one group per channel, i.e. a
cross-correlation (the kernel is not flipped; the taps are symmetric for every kernel that fits
inside the impulse, so this only matters for tiny ``size``).

These functions are the contract the fused ``augment_smooth`` kernel is tested against; they run
on any device.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

#: Taps at or below this value are dropped from the official kernel.
TAP_THRESHOLD = 0.01

_PADDINGS = ("same", "valid")


@functools.lru_cache(maxsize=64)
def _taps_numpy(std: float, size: int) -> np.ndarray:
    """The official kernel as a read-only float32 numpy array (cached by (std, size))."""
    from scipy.ndimage import gaussian_filter1d  # scipy is a dependency; import lazily

    impulse = np.zeros(size, dtype=np.float32)
    impulse[size // 2] = 1
    filtered = gaussian_filter1d(impulse, std)  # float32 in, float32 out, as in the official code
    kept = filtered[filtered > TAP_THRESHOLD]
    if kept.size == 0:
        raise ValueError(
            f"gaussian_taps(std={std}, size={size}): no tap of the filtered impulse exceeds "
            f"{TAP_THRESHOLD}; use a smaller smooth_kernel_std or a larger smooth_kernel_size")
    taps = kept / np.sum(kept)
    taps = np.ascontiguousarray(taps, dtype=np.float32)
    taps.setflags(write=False)
    return taps


def gaussian_taps(std: float = 2.0, size: int = 100) -> torch.Tensor:
    """The official Gaussian smoothing kernel: a float32 1-D CPU tensor of K taps summing to 1.

    Args:
        std: standard deviation in time bins (``smooth_kernel_std``), > 0.
        size: length of the impulse the kernel is cut from (``smooth_kernel_size``), >= 1.

    The result is bit-identical to the kernel the official ``gauss_smooth`` builds (float32
    impulse, ``gaussian_filter1d`` defaults, taps > 0.01, division by their float32 sum). It is
    cached by ``(std, size)``; every call returns a fresh tensor, so callers may modify it.
    """
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) \
            or std <= 0:
        raise ValueError(f"gaussian_taps: std (smooth_kernel_std) must be a finite number > 0, "
                         f"got {std!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"gaussian_taps: size (smooth_kernel_size) must be an integer >= 1, "
                         f"got {size!r}")
    return torch.from_numpy(_taps_numpy(float(std), int(size)).copy())


def same_padding(k: int) -> tuple[int, int]:
    """(left, right) zero padding of 'same' for a K-tap kernel, as ``conv1d(padding='same')``.

    K - 1 zeros in total, the smaller half on the left: (K//2, K//2) for odd K, (K/2 - 1, K/2)
    for even K.
    """
    total = k - 1
    return total // 2, total - total // 2


def smooth_output_length(t: int, k: int, padding: str = "same") -> int:
    """Number of time steps the smoothing returns for T input steps and a K-tap kernel."""
    if padding == "same":
        return t
    if padding == "valid":
        return t - k + 1
    raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")


def _check_taps(taps: torch.Tensor) -> None:
    if not isinstance(taps, torch.Tensor):
        raise TypeError(f"smooth_ref: taps must be a torch.Tensor, got {type(taps).__name__}")
    if taps.dim() != 1 or taps.numel() == 0:
        raise ValueError(f"smooth_ref: taps must be a non-empty 1-D tensor (K,), got shape "
                         f"{tuple(taps.shape)}")
    if not taps.is_floating_point():
        raise TypeError(f"smooth_ref: taps must be floating point, got {taps.dtype}")


def smooth_ref(x: torch.Tensor, taps: torch.Tensor, padding: str = "same") -> torch.Tensor:
    """Per-channel smoothing along time: ``out[b, t, c] = sum_k taps[k] * xp[b, t + k, c]``.

    Args:
        x: (B, T, C) features, any floating dtype, any strides, any device.
        taps: (K,) kernel, e.g. ``gaussian_taps(2.0, 100)``; moved to ``x``'s device.
        padding: ``'same'``: ``xp`` is ``x`` zero-padded by :func:`same_padding` (K//2 each side
            for odd K, like ``conv1d(padding='same')`` for even K), output length T (also when
            T < K); ``'valid'``: no padding, output length T - K + 1 (T >= K required).

    Computes in float32 (autocast is disabled inside) and returns a contiguous float32
    (B, T_out, C) tensor. Differentiable with respect to ``x`` and ``taps``.
    """
    if padding not in _PADDINGS:
        raise ValueError(f"smooth_ref: padding must be one of {_PADDINGS}, got {padding!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"smooth_ref: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"smooth_ref: x must be (B, T, C), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"smooth_ref: x must be floating point, got {x.dtype}")
    _check_taps(taps)
    B, T, C = x.shape
    K = taps.numel()
    if padding == "valid" and T < K:
        raise ValueError(f"smooth_ref: 'valid' smoothing needs T >= K, got T={T} time steps and "
                         f"a {K}-tap kernel")
    if B == 0 or C == 0 or T == 0:
        return torch.zeros(B, smooth_output_length(T, K, padding), C, dtype=torch.float32,
                           device=x.device)
    weight = taps.to(device=x.device, dtype=torch.float32).reshape(1, 1, K).expand(C, 1, K)
    xc = x.to(torch.float32).permute(0, 2, 1)  # (B, C, T), a view as in the official code
    with torch.autocast(device_type=x.device.type, enabled=False):
        if padding == "same" and K % 2 == 0:
            # what conv1d(padding='same') does for even K (asymmetric zero padding), without
            # its warning about the padded copy
            xc = F.pad(xc, same_padding(K))
            y = F.conv1d(xc, weight.contiguous(), groups=C)
        else:
            # conv1d's own 'same'/'valid' padding: the exact call the official gauss_smooth makes
            y = F.conv1d(xc, weight.contiguous(), padding=padding, groups=C)
    return y.permute(0, 2, 1).contiguous()
