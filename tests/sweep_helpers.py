"""What the sweep tests share: a tiny synthetic release, tiny configurations written as files,
and the ``fastbci sweep`` command run in process."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from fastbci import commands, synth

#: a tiny model on the small preset, CPU reference path, a validation every 4 batches
TINY = {
    "model": {"n_units": 16, "n_layers": 1, "rnn_dropout": 0.0},
    "dataset": {"batch_size": 6, "days_per_batch": 2},
    "num_training_batches": 12, "batches_per_train_log": 4, "batches_per_val_step": 4,
    "lr_max": 0.02, "lr_max_day": 0.02, "lr_warmup_steps": 2, "lr_warmup_steps_day": 2,
    "lr_decay_steps": 12, "lr_decay_steps_day": 12,
    "fastbci": {"impl": "reference", "device": "cpu", "rng": "torch", "plot": False},
}


#: a release and configuration on which a tiny GRU learns its first phonemes within a CPU
#: test's budget: validation PER 0.63-0.70 after 10 batches at seeds 2 and 3 (not down to 0.5)
LEARN_SESSIONS = ["t15.2023.08.13", "t15.2023.08.18"]
LEARN_RELEASE = dict(sessions=LEARN_SESSIONS, train_only=[], n_train=60, n_val=6, signal=10.0,
                     noise=0.1, drift=0.0, min_words=1, max_words=1, neural_dim=32)
LEARN = {"dataset": {"neural_dim": 32, "sessions": LEARN_SESSIONS, "dataset_probability_val": [1, 1],
                     "batch_size": 16},
         "model": {"n_units": 64, "n_input_features": 32,
                   "input_network": {"input_layer_sizes": [32], "input_layer_dropout": 0.0}},
         "num_training_batches": 40, "batches_per_val_step": 10, "lr_max": 0.05,
         "lr_max_day": 0.05, "lr_decay_steps": 80, "lr_decay_steps_day": 80,
         "lr_warmup_steps": 5, "lr_warmup_steps_day": 5}


def write_release(d: Path, **kw) -> Path:
    synth.write_release(d, **{**synth.PRESETS["small"], "seed": 0, "progress": False, **kw})
    return d


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_config(path: Path, release: Path, *extra: dict) -> Path:
    """The release's own configuration with :data:`TINY` and ``extra`` on top, as a file."""
    cfg = yaml.safe_load((release / "synth_config.yaml").read_text())
    for e in (TINY, *extra):
        cfg = merge(cfg, e)
    path.write_text(yaml.safe_dump(cfg))
    return path


def sweep(*argv: str) -> int:
    """``fastbci sweep ARGV`` in this process: the exit status."""
    return commands.main(["sweep", *(str(a) for a in argv)])


def read_status(folder: Path) -> dict:
    return json.loads((folder / "run_status.json").read_text())
