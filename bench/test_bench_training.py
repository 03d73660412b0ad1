"""Benchmark: real training throughput through the command line, ``python -m fastbci.train``.

The official recipe (the built-in defaults) on a synthetic release without validation trials, so
a run is setup + N training batches and nothing else (no validation, no checkpoint). Three runs
in fresh processes: a short one (N0 batches, which also fills Triton's on-disk kernel cache), a
long one (N0 + N) and the short one again; the time per batch of real training is

    (wall(long) - wall(second short)) / N,

setup, imports, data loading and kernel loading cancelling out. Only the CLI is used (no trainer
internals). extra_info: ``s_per_batch``, ``batches_per_s``, ``projected_120k_batches_h``
(120,000 batches of the official run, validations excluded), the three wall times, N0 and N.

GPU: official shapes (B = 64 from 4 days, 512 features, T near 800, GRU 5 x 768, bf16 autocast),
N0 = 20, N = 200. CPU (no GPU): the small preset, a tiny model, N0 = 2, N = 12: CPU figures.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench_helpers import ON_GPU
from fastbci import synth

OFFICIAL_BATCHES = 120_000
if ON_GPU:
    RELEASE = dict(sessions=4, n_train=32, n_val=0, n_test=0, neural_dim=512, min_words=5,
                   max_words=8, train_only=[])
    OVERRIDES = ["fastbci.impl=fused"]
    N0, N = 20, 200
else:
    RELEASE = dict(synth.PRESETS["small"], n_val=0, n_test=0)
    OVERRIDES = ["model.n_units=16", "model.n_layers=1", "dataset.batch_size=4",
                 "dataset.days_per_batch=2"]
    N0, N = 2, 12
TIMEOUT_S = 240


def _train(config: str, out: str, n_batches: int) -> float:
    """Wall seconds of one ``python -m fastbci.train`` process; fails on a non-zero exit."""
    cmd = [sys.executable, "-m", "fastbci.train", config, f"output_dir={out}",
           f"checkpoint_dir={out}/checkpoint", f"num_training_batches={n_batches}",
           "fastbci.plot=false", "fastbci.progress=false", "fastbci.overwrite=true", *OVERRIDES]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    dt = time.perf_counter() - t0
    assert res.returncode == 0, (f"{' '.join(cmd)} exited {res.returncode}:\n"
                                 f"{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    return dt


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_training")
    return synth.write_release(root, seed=0, progress=False, **RELEASE)


def test_bench_training_throughput(benchmark, release, tmp_path):
    benchmark.group = "training_cli"
    config = release["config"]
    short_cold = _train(config, str(tmp_path / "short_cold"), N0)
    if benchmark.disabled:  # smoke test: the CLI trains
        return
    long_s = {}

    def long_run():
        long_s["t"] = _train(config, str(tmp_path / "long"), N0 + N)

    benchmark.pedantic(long_run, rounds=1, iterations=1, warmup_rounds=0)
    short = _train(config, str(tmp_path / "short"), N0)
    # None when the N batches did not outlast the processes' jitter (tiny CPU runs)
    per_batch = (long_s["t"] - short) / N if long_s["t"] > short else None
    benchmark.extra_info.update(
        cpu_figures=not ON_GPU, n0=N0, n=N, wall_short_cold_s=short_cold, wall_long_s=long_s["t"],
        wall_short_s=short, s_per_batch=per_batch,
        batches_per_s=1.0 / per_batch if per_batch else None,
        projected_120k_batches_h=per_batch * OFFICIAL_BATCHES / 3600 if per_batch else None,
        command="python -m fastbci.train <synthetic release> " + " ".join(OVERRIDES),
        mean_T=release["n_time_steps"]["mean"], neural_dim=RELEASE["neural_dim"])
    if not ON_GPU:
        benchmark.extra_info["note"] = ("CPU figures: the small preset and a tiny model; not a "
                                        "GPU measurement")
