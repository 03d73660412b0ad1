"""What the Triton-backed ops share: is Triton importable, do the kernels run in the Triton
interpreter, and the lazy import of a kernel module (so that the reference paths work without
Triton)."""
from __future__ import annotations

import importlib
from types import ModuleType

from fastbci.kernels import launch as _launch  # no Triton import


def interpreted() -> bool:
    """True when the kernels are defined for the Triton interpreter (``TRITON_INTERPRET=1`` before
    ``fastbci.kernels.launch`` was imported, as ``triton.jit`` decides): the only way they run on a CPU."""
    return _launch.INTERPRETED


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the installation
        return False
    return True


def load_kernels(name: str, where: str) -> ModuleType:
    """``fastbci.kernels.<name>``, or a RuntimeError saying that impl='fused' needs Triton."""
    try:
        return importlib.import_module(f"fastbci.kernels.{name}")
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise RuntimeError(f"{where}: impl='fused' needs Triton, which failed to import ({e}); "
                           "use impl='reference' or install triton") from e
