"""Benchmark: the distributed step on 2 gloo ranks (CPU), torch DistributedDataParallel as
fastbci uses it against the hand-made reducer it replaced, in one run (bench/ddp_worker.py: the
same model and batches, the two timed in interleaved blocks, median step time each).

extra_info: ``ddp_step_s``, ``reducer_step_s``, ``reducer_over_ddp`` (> 1: DDP is faster), the
shapes, and ``same_gradients`` (the two give the same gradients; asserted). CPU figures: two
processes on the machine's cores, gloo over loopback; a GPU/NCCL run is another matter."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench_helpers import run_bench

TIMEOUT_S = 300


def _launch(out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("ddp_worker.py")), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return json.loads((out / "ddp_bench.json").read_text())


@pytest.mark.benchmark(group="distributed: 2 gloo ranks, one step")
def test_ddp_against_the_old_reducer(benchmark, tmp_path):
    res = run_bench(benchmark, _launch, tmp_path, rounds=1, warmup=0,
                    what="whole torchrun launch (the step figures are in extra_info)")
    assert res["same_gradients"], "DDP and the old reducer gave different gradients"
    benchmark.extra_info.update(res)
    print(f"\n2 gloo ranks: DDP {res['ddp_step_s'] * 1e3:.1f} ms/step, old reducer "
          f"{res['reducer_step_s'] * 1e3:.1f} ms/step (reducer/DDP {res['reducer_over_ddp']:.2f})")
