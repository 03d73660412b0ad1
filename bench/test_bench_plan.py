"""Benchmark: drawing the official train batch plan (120,000 batches of 64 from 4 of 45 days with
180 trials each), read in order as the trainer reads it. Target: under 30 s on 2 CPU cores (the
official trainer draws its plan up front in about as long; a slower plan delays every start).

extra_info: ``seconds``, ``batches_per_s``."""
from __future__ import annotations

import time

import numpy as np
import pytest

try:
    from bench.conftest import run_bench
except ImportError:  # bench/ run as a rootdir of its own
    from conftest import run_bench
from fastbci.data import train_batch_plan

N_BATCHES, TARGET_S = 120_000, 30.0


def _draw_all() -> int:
    rows, start = [], 0
    for _ in range(45):
        rows.append(np.arange(start, start + 180))
        start += 180
    plan = train_batch_plan(rows, N_BATCHES, 64, 4, 1)
    return sum(len(plan[k]) for k in range(len(plan)))


@pytest.mark.benchmark(group="batch plan: the official 120,000 batches")
def test_official_size_plan(benchmark):
    t0 = time.perf_counter()
    n_rows = run_bench(benchmark, _draw_all, rounds=1, warmup=0, n_batches=N_BATCHES,
                       target_s=TARGET_S)
    dt = time.perf_counter() - t0
    benchmark.extra_info.update(seconds=dt, batches_per_s=N_BATCHES / dt)
    assert n_rows == N_BATCHES * 64
    assert dt < TARGET_S, f"drawing {N_BATCHES:,} batches took {dt:.1f} s (target {TARGET_S:.0f} s)"
