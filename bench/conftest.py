"""Benchmark configuration: the Triton interpreter on a machine without a GPU (set before any
kernel is defined), the report header and the device fixture; the shared helpers are in
``bench_helpers.py``.

Run: ``pytest bench --benchmark-only`` (add ``--benchmark-json=FILE`` to save results).
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench_helpers import DEVICE, DEVICE_NAME, ON_GPU  # noqa: E402


def pytest_report_header(config):
    note = "" if ON_GPU else " (no GPU: CPU cases at small shapes; GPU figures are NOT measured)"
    return [f"fastbci benchmarks on {DEVICE_NAME}{note}"]


@pytest.fixture
def bench_device():
    return DEVICE
