"""The C++ / CUDA extension ``fastbci._C``: imported once (its import runs the op registrations),
and which device types each of its ops has a kernel for, looked up once at import (a dispatcher
query inside a torch.compile region would break the graph)."""
from __future__ import annotations

import torch

BUILD_HINT = ("build it from the fastbci source tree with `pip install -e . --no-build-isolation` "
              "(torch must be installed first; a CUDA build of torch plus nvcc/CUDA_HOME gives the "
              "CUDA kernels too)")

_error: str | None = None
try:
    import fastbci._C  # noqa: F401
except ImportError as e:  # a source checkout that was never built
    _error = f"{type(e).__name__}: {e}"


def available() -> bool:
    """True when ``fastbci._C`` imported (its CPU kernels always exist then)."""
    return _error is None


def import_error() -> str | None:
    """Why ``fastbci._C`` did not import (None when it did)."""
    return _error


def _kernel_devices(op: str) -> frozenset[str]:
    if _error is not None:
        return frozenset()
    try:
        return frozenset(dev for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
                         if torch._C._dispatch_has_kernel_for_dispatch_key(op, key))
    except RuntimeError:  # a build of fastbci._C older than this op: rebuild to get it
        return frozenset()


#: ``{op name: device types with a kernel}`` of the extension's ops
KERNELS: dict[str, frozenset[str]] = {op: _kernel_devices(op) for op in (
    "fastbci::day_projection", "fastbci::gather_padded")}


def has_kernel(op: str, device_type: str) -> bool:
    """True when the built extension has a kernel of ``op`` for ``device_type``."""
    return device_type in KERNELS.get(op, frozenset())
