"""The signals family: Ctrl-C (SIGINT) or SIGTERM (kill, SLURM) in the middle of training stops
a real ``fastbci.train`` child process after the current batch with exit status 130, a message
that says so and gives the command that resumes, a checkpoint that resumes at the next batch,
no traceback, no temporary file and the data untouched. (A signal during start-up is the
command layer's: tests/test_signals.py and the commands' tests.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from faultkit import digest, temporaries, train_argv

from fastbci import checkpoint as ckpt_io
from fastbci.errors import EXIT_INTERRUPTED

TIMEOUT_S = 180


def _train_records(path) -> int:
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"split": "train"' in line)


@pytest.mark.slow  # real training processes, signalled
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_fault(sig, release, tmp_path):
    out = tmp_path / "run"
    argv = train_argv(release / "synth_config.yaml", out, "num_training_batches=100000",
                      "batches_per_val_step=100000")
    before = digest(release)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    child = subprocess.Popen([sys.executable, "-m", "fastbci.train", *argv], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + TIMEOUT_S
        while _train_records(out / "metrics.jsonl") < 2:
            assert child.poll() is None, "the run ended before the signal:\n" + child.stdout.read()
            assert time.time() < deadline, "no training progress in time"
            time.sleep(0.1)
        child.send_signal(getattr(signal, sig))
        output, _ = child.communicate(timeout=TIMEOUT_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == EXIT_INTERRUPTED, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "Resume with: fastbci train" in output and "fastbci.resume=true" in output, output[-3000:]
    status = json.loads((out / "run_status.json").read_text())
    assert status["status"] == "interrupted", status
    state = ckpt_io.resume_state_of(ckpt_io.load(out / "checkpoint" / ckpt_io.RESUME_NAME), "resume")
    assert int(state["next_batch"]) == status["last_batch"] + 1 >= 2, (state["next_batch"], status)
    assert not temporaries(out, out / "checkpoint"), temporaries(out, out / "checkpoint")
    assert digest(release) == before, "the data was modified"
