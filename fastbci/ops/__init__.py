"""The fused ops, each with ``impl="auto" | "fused" | "reference"``.

* ``augment_smooth`` / ``augment_smooth_gather``: white noise, constant offset, random cut and
  Gaussian smoothing in one Triton kernel (from a padded batch or straight from a TrialStore).
* ``day_projection``: the day-specific input layer, C++ (CPU) / CUDA extension ``fastbci._C``.
* ``patchify``: 14/4 sliding windows, Triton forward and fold-back backward.

``auto`` picks the fused implementation where it runs natively (CUDA for the Triton kernels, the
extension wherever it is built) and the pure-PyTorch reference otherwise.
"""
from fastbci.ops.augment import augment_smooth, augment_smooth_gather  # noqa: F401
from fastbci.ops.day_projection import day_projection, fused_available  # noqa: F401
from fastbci.ops.patchify import Patchify, patch_input_lengths, patchify  # noqa: F401

__all__ = ["augment_smooth", "augment_smooth_gather", "day_projection", "fused_available",
           "patchify", "Patchify", "patch_input_lengths"]
