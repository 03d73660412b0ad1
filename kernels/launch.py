"""What the Triton launchers of ``fastbci.kernels`` share (``kernels/launch.py``, installed as
``fastbci.kernels.launch``).

This module imports no Triton, so the reference paths work without it. ``kernels/`` has no
``__init__.py``: the folder is ``fastbci.kernels`` (a namespace package inside ``fastbci``, through
the ``fastbci/kernels`` link), never a top-level ``kernels`` package, so that from the
repository root it cannot shadow Hugging Face's ``kernels`` package, which transformers imports.
It holds what the launchers share:

* ``INTERPRETED``: True when ``TRITON_INTERPRET=1`` was set before this module was imported,
  i.e. when ``triton.jit`` defines the kernels for the Triton interpreter (CPU), not a GPU;
* :func:`device_guard`: Triton launches on the *current* CUDA device, so every launch runs
  inside the guard of its output tensor's device;
* :func:`int64_bits`: 64-bit keys and offsets as the signed int64 the kernels declare.
"""
import contextlib
import os

import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def device_guard(t: torch.Tensor):
    """``torch.cuda.device(t.device)`` for a CUDA tensor (Triton takes the current device and
    stream from torch), a no-op context otherwise."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def int64_bits(v: int) -> int:
    """An integer in [-2**63, 2**64) as the int64 with the same low 64 bits (two's complement):
    the kernels declare their Philox key and offsets ``tl.int64`` so that no value changes the
    compiled signature (Triton would pick i32, i64 or u64 from the value)."""
    v = int(v)
    if not -(1 << 63) <= v < (1 << 64):
        raise ValueError(f"{v} does not fit in 64 bits")
    return v - (1 << 64) if v >= (1 << 63) else v
