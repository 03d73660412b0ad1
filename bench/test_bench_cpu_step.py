"""Benchmark: the CPU training step with the day projection of the C++ extension (what
``fastbci.impl=auto`` runs on a CPU) against the pure-PyTorch reference, the same run otherwise:
two trainers on the same synthetic release, their steps on the same batches timed in interleaved
blocks (machine drift hits both alike), median per step.

Cases: configs/demo.yaml at 128 features, 2 x 128 GRU, dropout 0.2, batch 32 (the demo's shape
until the demo moved to 64 features, 1 layer, no dropout: the day layer's dropout is what
``rng=philox`` moves into the op, so the case keeps it) with
``fastbci.rng=torch`` (its default: the day-layer dropout is torch's, after the op) and
``rng=philox`` (the op draws the dropout mask); ``FASTBCI_BENCH_LARGE=1`` adds 512 features,
2 x 256 GRU, batch 16, both rngs. extra_info: ``reference_step_s``, ``auto_step_s``,
``reference_over_auto`` (> 1: the C++ day projection makes the step faster). CPU figures only."""
from __future__ import annotations

import os
import statistics
import time

import pytest

from bench_helpers import ON_GPU, run_bench
from fastbci import synth
from fastbci.config import load_config
from fastbci.training import Trainer

SESSIONS = ("t15.2023.08.13", "t15.2023.08.18", "t15.2023.08.20", "t15.2023.08.25")
DEMO128 = ["model.n_input_features=128", "dataset.neural_dim=128",
           "model.input_network.input_layer_sizes=[128]", "model.n_layers=2", "model.rnn_dropout=0.2",
           "model.input_network.input_layer_dropout=0.2"]
LARGE = ["model.n_input_features=512", "dataset.neural_dim=512",
         "model.input_network.input_layer_sizes=[512]", "model.n_units=256", "model.n_layers=2",
         "dataset.batch_size=16", "model.rnn_dropout=0.2", "model.input_network.input_layer_dropout=0.2"]
CASES = [("demo", "torch"), ("demo", "philox")]
if os.environ.get("FASTBCI_BENCH_LARGE") == "1":
    CASES += [("512", "torch"), ("512", "philox")]
BLOCKS, STEPS = 4, 1


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpu_step")
    out = {}
    for size, dim in (("demo", 128), ("512", 512)):
        if any(c[0] == size for c in CASES):
            out[size] = root / size
            synth.write_release(out[size], sessions=SESSIONS, n_train=12, n_val=0, n_test=0,
                                neural_dim=dim, seed=0, min_words=3, max_words=5)
    return out


def _trainer(data, out, size, rng, impl):
    over = [f"dataset.dataset_dir={data}", f"output_dir={out}", f"checkpoint_dir={out}/checkpoint",
            "num_training_batches=50", "fastbci.device=cpu", "fastbci.progress=false",
            "fastbci.plot=false", f"fastbci.rng={rng}", f"fastbci.impl={impl}",
            "dataset.dataset_probability_val=[0,0,0,0]", *(LARGE if size == "512" else DEMO128)]
    return Trainer(load_config("configs/demo.yaml", over), console=False).setup()


@pytest.mark.skipif(ON_GPU, reason="a CPU comparison")
@pytest.mark.parametrize("size,rng", CASES)
@pytest.mark.benchmark(group="cpu step: C++ day projection (auto) vs reference")
def test_cpu_step_day_projection(benchmark, releases, tmp_path, size, rng):
    tr = {impl: _trainer(releases[size], tmp_path / impl, size, rng, impl)
          for impl in ("reference", "auto")}
    times = {"reference": [], "auto": []}
    for block in range(BLOCKS + 1):  # block 0 warms up
        for impl in ("reference", "auto") if block % 2 == 0 else ("auto", "reference"):
            for k in range(STEPS):
                t0 = time.perf_counter()
                tr[impl].train_step(block * STEPS + k)
                if block:
                    times[impl].append(time.perf_counter() - t0)
    ref, auto = statistics.median(times["reference"]), statistics.median(times["auto"])
    run_bench(benchmark, tr["auto"].train_step, 0, rounds=1, warmup=0, size=size, rng=rng,
              reference_step_s=ref, auto_step_s=auto, reference_over_auto=ref / auto,
              steps_each=len(times["auto"]), threads=__import__("torch").get_num_threads())
    print(f"\n{size} rng={rng}: reference {ref * 1e3:.0f} ms/step, auto (C++ day projection) "
          f"{auto * 1e3:.0f} ms/step, reference/auto {ref / auto:.2f}")
