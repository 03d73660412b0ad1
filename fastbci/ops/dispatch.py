"""One rule for every op: which implementation runs for a given input.

Every op takes ``impl="auto" | "fused" | "reference"`` and asks :func:`resolve` what to run:

* ``reference``: the pure-PyTorch reference (fastbci.reference), everywhere;
* ``fused``: the fused implementation, or an error saying why it cannot run on this input and
  what to do. The Triton kernels (``augment``, ``patchify``) run on CUDA, and on the CPU only
  through the Triton interpreter (``TRITON_INTERPRET=1`` set before ``fastbci.kernels`` is
  imported: how the tests run them); the extension's ops (``day_projection``, ``gather``) run
  wherever ``fastbci._C`` has a kernel for the input's device and dtype;
* ``auto``: ``fused`` where it runs natively and is at least as fast as the reference (the
  Triton kernels on CUDA; the extension's ops on every device it has a kernel for, the CPU
  included: docs/benchmarks.md has the CPU measurement), else ``reference``.

The trainer, evaluation and the model pass ``auto`` (or the user's ``fastbci.impl``) straight
through; nothing else decides an implementation.
"""
from __future__ import annotations

import torch

from fastbci.ops import _ext
from fastbci.ops._triton import interpreted, triton_importable

__all__ = ["IMPLS", "OPS", "check_impl", "resolve", "describe"]

IMPLS = ("auto", "fused", "reference")

_TRITON_DTYPES = {
    "augment": (torch.float32, torch.bfloat16, torch.float16),
    "patchify": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}
_EXT_OPS = {"day_projection": "fastbci::day_projection", "gather": "fastbci::gather_padded"}
_EXT_DTYPES = {
    "day_projection": {"cpu": (torch.float32, torch.bfloat16, torch.float64),
                       "cuda": (torch.float32, torch.bfloat16)},
    "gather": None,  # any dtype: bytes are copied
}
OPS = tuple(_TRITON_DTYPES) + tuple(_EXT_OPS)


def check_impl(impl, where: str) -> str:
    """``impl`` if it is one of :data:`IMPLS`, else a ValueError naming ``where``."""
    if impl not in IMPLS:
        raise ValueError(f"{where}: impl must be one of {IMPLS}, got {impl!r}")
    return impl


def _names(dtypes) -> str:
    """``float32, bfloat16 or float64``."""
    names = [str(d).replace("torch.", "") for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _triton_obstacle(op: str, x: torch.Tensor) -> tuple[bool, Exception | None]:
    """(runs natively, why the fused kernel cannot run at all: None when it can)."""
    where = f"fastbci.ops.{op}"
    dtypes = _TRITON_DTYPES[op]
    if x.dtype not in dtypes:
        return False, TypeError(f"{where}: impl='fused' supports {_names(dtypes)} inputs, got "
                                f"{x.dtype}; use impl='reference'")
    if not triton_importable():
        return False, RuntimeError(f"{where}: impl='fused' needs Triton, which failed to import; "
                                   "use impl='reference'")
    if x.device.type == "cuda":
        return True, None
    if x.device.type == "cpu":
        if interpreted():
            return False, None
        return False, RuntimeError(
            f"{where}: impl='fused' needs a CUDA tensor, or a CPU tensor under the Triton "
            "interpreter: set TRITON_INTERPRET=1 before fastbci.kernels is imported, or use "
            "impl='reference' (or impl='auto')")
    return False, RuntimeError(f"{where}: impl='fused' needs a CUDA tensor (or a CPU one under "
                               f"TRITON_INTERPRET=1), got one on {x.device}; use impl='reference'")


def _ext_obstacle(op: str, x: torch.Tensor) -> tuple[bool, Exception | None]:
    where = f"fastbci.ops.{op}"
    if not _ext.available():
        return False, RuntimeError(f"{where}: impl='fused' needs the C++ extension fastbci._C, "
                                   f"which could not be imported ({_ext.import_error()}); "
                                   f"{_ext.BUILD_HINT}")
    if not _ext.has_kernel(_EXT_OPS[op], x.device.type):
        return False, RuntimeError(
            f"{where}: impl='fused' has no kernel for device '{x.device.type}' in this build of "
            "fastbci._C (CUDA kernels are compiled only when torch has CUDA and nvcc is found, "
            f"with FASTBCI_SKIP_CUDA_BUILD unset); {_ext.BUILD_HINT}, or use impl='reference'")
    table = _EXT_DTYPES[op]
    dtypes = None if table is None else table.get(x.device.type, ())
    if dtypes is not None and x.dtype not in dtypes:
        return False, TypeError(f"{where}: impl='fused' on {x.device.type} supports "
                                f"{_names(dtypes)} inputs, got {x.dtype}; use impl='reference'")
    return True, None


def resolve(op: str, x: torch.Tensor, impl: str) -> str:
    """``"fused"`` or ``"reference"``: what ``op`` runs for input ``x`` under ``impl`` (the rule of
    the module docstring). ``impl="fused"`` where the fused implementation cannot run is a
    RuntimeError (TypeError for a dtype it does not support) that says why and what to do."""
    check_impl(impl, f"fastbci.ops.{op}")
    if op not in OPS:
        raise ValueError(f"fastbci.ops.dispatch.resolve: unknown op {op!r} (one of {OPS})")
    if impl == "reference":
        return "reference"
    native, obstacle = (_triton_obstacle if op in _TRITON_DTYPES else _ext_obstacle)(op, x)
    if impl == "auto":
        return "fused" if native else "reference"
    if obstacle is not None:
        raise obstacle
    return "fused"


def describe(device: torch.device, impl: str = "auto") -> str:
    """What each op of the training path runs on ``device`` under ``impl``, for the run's log,
    e.g. ``augment reference, day_projection fused, patchify reference``."""
    probe = torch.empty(0, device=device)
    parts = []
    for op in ("augment", "day_projection", "patchify"):
        try:
            parts.append(f"{op} {resolve(op, probe, impl)}")
        except (RuntimeError, TypeError):
            parts.append(f"{op} unavailable")
    return ", ".join(parts)
