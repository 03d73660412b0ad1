"""The scalars of the transform step (docs/recipe.md section 3) as one value: what the augment op
takes instead of a configuration dict, checked once when it is made (never per call)."""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping

__all__ = ["Augmentation"]

_STD_FIELDS = ("white_noise_std", "constant_offset_std", "static_gain_std", "random_walk_std",
               "smooth_kernel_std")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training augmentation and smoothing, the official defaults unless given.

    ``white_noise_std``, ``constant_offset_std``, ``static_gain_std``, ``random_walk_std``:
    standard deviations (>= 0; the last two 0 = off); ``random_walk_axis``: an axis of the
    ``(B, T, C)`` batch; ``random_cut``: the cut is drawn from ``[0, random_cut)`` (0 = off);
    ``smooth``: Gaussian smoothing with ``smooth_kernel_std`` and ``smooth_kernel_size`` (the
    official kernel construction). Validation runs only the smoothing; training runs all.
    """
    white_noise_std: float = 1.0
    constant_offset_std: float = 0.2
    random_cut: int = 3
    static_gain_std: float = 0.0
    random_walk_std: float = 0.0
    random_walk_axis: int = -1
    smooth: bool = True
    smooth_kernel_std: float = 2.0
    smooth_kernel_size: int = 100

    def __post_init__(self):
        for name in _STD_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)) \
                    or float(v) < 0:
                raise ValueError(f"Augmentation: {name} must be a finite number >= 0, got {v!r}")
            object.__setattr__(self, name, float(v))
        for name, lo in (("random_cut", 0), ("smooth_kernel_size", 1), ("random_walk_axis", -3)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < lo:
                raise ValueError(f"Augmentation: {name} must be an integer >= {lo}, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.random_walk_axis > 2:
            raise ValueError(f"Augmentation: random_walk_axis must be an axis of the (B, T, C) "
                             f"batch, an integer in [-3, 2], got {self.random_walk_axis}")
        if not isinstance(self.smooth, bool):
            raise ValueError(f"Augmentation: smooth must be true or false, got {self.smooth!r}")

    @classmethod
    def from_transforms(cls, transforms: Mapping[str, Any]) -> "Augmentation":
        """From a configuration's ``dataset.data_transforms`` (every key it uses must be there)."""
        if not isinstance(transforms, Mapping):
            raise TypeError(f"Augmentation.from_transforms: expected the dataset.data_transforms "
                            f"mapping, got {type(transforms).__name__}")
        values = {}
        for f in dataclasses.fields(cls):
            key = "smooth_data" if f.name == "smooth" else f.name
            if key not in transforms:
                raise KeyError(f"Augmentation.from_transforms: dataset.data_transforms lacks the "
                               f"key {key!r}; it has {sorted(transforms)}")
            values[f.name] = transforms[key]
        return cls(**values)

    def transforms(self) -> dict[str, Any]:
        """The ``dataset.data_transforms`` layout of these values (what the reference functions
        of :mod:`fastbci.reference` read)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["smooth_data"] = out.pop("smooth")
        return out
