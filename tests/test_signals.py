"""SIGTERM, what ``kill``, SLURM and other batch schedulers send before they kill a job: a real
``python -m fastbci.train`` child process gets a real SIGTERM in the middle of training, saves a
resumable checkpoint, exits 130 and prints the command that resumes it; that command continues
from the saved batch. (Ctrl-C in one process and SIGTERM in a distributed rank are tested in
tests/test_train.py and tests/test_distributed.py.)"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastbci import checkpoint as ckpt_io
from fastbci.errors import EXIT_INTERRUPTED

TIMEOUT_S = 240


@pytest.fixture(scope="module")
def release(small_release):
    return small_release


def _train_records(path) -> int:
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"split": "train"' in line)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_saves_a_resumable_checkpoint_and_exits_130(release, tmp_path):
    out = tmp_path / "run"
    args = [str(release / "synth_config.yaml"), f"output_dir={out}",
            f"checkpoint_dir={out}/checkpoint", "model.n_units=16", "model.n_layers=1",
            "model.rnn_dropout=0.0", "dataset.batch_size=4", "dataset.days_per_batch=2",
            "num_training_batches=400", "batches_per_train_log=1", "batches_per_val_step=1000",
            "fastbci.device=cpu", "fastbci.plot=false", "fastbci.progress=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    child = subprocess.Popen([sys.executable, "-m", "fastbci.train", *args], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + TIMEOUT_S
        while _train_records(out / "metrics.jsonl") < 3:
            assert child.poll() is None, "the run ended before the signal:\n" + child.stdout.read()
            assert time.time() < deadline, "no training progress in time"
            time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        output, _ = child.communicate(timeout=TIMEOUT_S)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == EXIT_INTERRUPTED, output[-3000:]
    assert "SIGTERM: stopping after this batch and saving a resumable checkpoint" in output
    status = json.loads((out / "run_status.json").read_text())
    assert status["status"] == "interrupted"
    ck = ckpt_io.load(out / "checkpoint" / ckpt_io.RESUME_NAME)
    saved = int(ckpt_io.resume_state_of(ck, "x")["next_batch"])
    assert saved == status["last_batch"] + 1 >= 3
    line = [ln for ln in output.splitlines() if "Resume with: " in ln]
    assert line, output[-3000:]
    command = shlex.split(line[-1].split("Resume with: ", 1)[1])
    assert command[:2] == ["fastbci", "train"] and "fastbci.resume=true" in command
    # the printed command continues from the saved batch (two more batches, then done)
    done = subprocess.run([sys.executable, "-m", "fastbci.train", *command[2:],
                           f"num_training_batches={saved + 2}"],
                          env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"Resumed from {out / 'checkpoint' / ckpt_io.RESUME_NAME} at batch {saved}" in \
        (out / "train.log").read_text()
    losses = torch.load(out / "checkpoint" / ckpt_io.RESUME_NAME, weights_only=False)
    assert len(losses["fastbci"]["train_losses"]) == saved + 2
