"""The fused ops, each with ``impl="auto" | "fused" | "reference"`` decided by one rule
(:func:`fastbci.ops.dispatch.resolve`).

* ``augment_smooth`` / ``augment_smooth_gather``: white noise, constant offset, random cut and
  Gaussian smoothing in one Triton kernel (from a padded batch or straight from a packed split),
  with the values of an :class:`Augmentation`.
* ``day_projection``: the day-specific input layer, C++ (CPU) / CUDA extension ``fastbci._C``.
* ``patchify``: 14/4 sliding windows, Triton forward and fold-back backward;
  ``patch_input_lengths``: the CTC input lengths of the official patching.
* ``gather_padded``: the zero-padded batch of whole trials out of a packed split (the extension's
  memcpy gather on the CPU).

``auto`` picks the fused implementation where it runs natively (CUDA for the Triton kernels, the
extension wherever it has a kernel) and the pure-PyTorch reference otherwise.
"""
from fastbci.ops.augment import augment_smooth, augment_smooth_gather  # noqa: F401
from fastbci.ops.augmentation import Augmentation  # noqa: F401
from fastbci.ops.day_projection import day_projection, fused_available  # noqa: F401
from fastbci.ops.dispatch import IMPLS, resolve  # noqa: F401
from fastbci.ops.gather import gather_padded  # noqa: F401
from fastbci.ops.patchify import Patchify, patch_input_lengths, patchify  # noqa: F401

__all__ = ["augment_smooth", "augment_smooth_gather", "Augmentation", "day_projection",
           "fused_available", "gather_padded", "patchify", "Patchify", "patch_input_lengths",
           "resolve", "IMPLS"]
