"""Triton kernels and their launchers only (installed as ``fastbci.kernels``).

``INTERPRETED``: True when ``TRITON_INTERPRET=1`` was set before this package was imported, i.e.
when ``triton.jit`` defines the kernels for the Triton interpreter (CPU) rather than a GPU.
"""
import os

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
