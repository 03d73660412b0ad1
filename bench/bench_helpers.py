"""What the benchmarks share: device choice, synchronised timing, memory, extra_info
(``from bench_helpers import ...``: pytest puts ``bench/`` on the path, which has no
``__init__.py`` so that no top-level folder of the repository is an importable package).

Run: ``pytest bench --benchmark-only`` (add ``--benchmark-json=FILE`` to save results).
On a machine without a GPU every case runs at small CPU shapes and says so in extra_info.
"""
from __future__ import annotations

import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
DEVICE_NAME = torch.cuda.get_device_name(0) if ON_GPU else "cpu"


def sync():
    if ON_GPU:
        torch.cuda.synchronize()


def synced(fn):
    """Wrap ``fn`` so that the timed call includes device synchronisation."""
    def run(*a, **k):
        out = fn(*a, **k)
        sync()
        return out
    return run


def peak_memory_bytes(fn, *args, **kwargs) -> int | None:
    """Peak CUDA memory allocated above the starting point while running ``fn`` once (None on CPU)."""
    if not ON_GPU:
        return None
    sync()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    fn(*args, **kwargs)
    sync()
    return torch.cuda.max_memory_allocated() - start


def run_bench(benchmark, fn, *args, rounds: int | None = None, warmup: int = 2, **info):
    """Time ``fn(*args)`` (synchronised) with warm-up, and record device + ``info`` in extra_info.

    Returns the benchmark's result (the last output of ``fn``).
    """
    timed = synced(fn)
    for _ in range(warmup):
        timed(*args)
    benchmark.extra_info.update({"device": DEVICE_NAME, "on_gpu": ON_GPU, **info})
    if rounds is None:
        rounds = 20 if ON_GPU else 3
    return benchmark.pedantic(timed, args=args, rounds=rounds, iterations=1, warmup_rounds=0)


def mean_seconds(benchmark) -> float:
    return float(benchmark.stats.stats.mean)


def median_seconds(fn, *args, repeat: int = 5, warmup: int = 1, **kwargs) -> float:
    """Median wall time of ``fn`` (synchronised): used to put the ratio to the reference into a
    fused case's extra_info without depending on test order."""
    import statistics
    import time

    timed = synced(fn)
    for _ in range(warmup):
        timed(*args, **kwargs)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        timed(*args, **kwargs)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)
