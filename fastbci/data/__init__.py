"""fastbci.data: the t15 data layer.

* :mod:`~fastbci.data.t15`: read / write / validate session files (docs/recipe.md section 1):
  :func:`session_paths`, :func:`read_session_file`, :func:`write_session_file`,
  :class:`DataError`, :class:`BadTrial` (the paths and errors live in
  :mod:`~fastbci.data.files`, the length rule of the model in :mod:`~fastbci.data.lengths`).
* :mod:`~fastbci.data.load`: :func:`load_split` reads a split once into an immutable
  :class:`PackedSplit` (one ``(N_total_steps, C)`` float32 tensor plus host metadata);
* :mod:`~fastbci.data.store`: :class:`TrialStore`, a split where training reads it (each field
  held once, :func:`placement` the one rule for where); ``store.gather(rows)`` the padded batch;
* :mod:`~fastbci.data.batch`: :class:`BatchBuilder` -> :class:`Batch`, the augmented device
  batch of the trainer and validation.
* :mod:`~fastbci.data.plan`: the official batch plans (docs/recipe.md section 2),
  :func:`train_batch_plan` -> :class:`TrainBatchPlan` (drawn a chunk at a time) and
  :func:`val_batch_plan` -> :class:`BatchPlan`.
* :mod:`~fastbci.data.phonemes`: :data:`PHONEMES` (41 classes, 0 = ``"BLANK"``, 40 = ``" | "``).

Typical use (what the trainer does)::

    store = TrialStore.from_config(cfg, "train", device="cuda")
    plan = train_batch_plan(store.trials_by_day, cfg["num_training_batches"],
                            cfg["dataset"]["batch_size"], cfg["dataset"]["days_per_batch"],
                            cfg["dataset"]["seed"], cfg["dataset"]["must_include_days"],
                            day_names=session_labels(store.sessions, store.files))
    features = store.gather(plan[k])      # (B, T_max, C), zero-padded

    val = TrialStore.from_config(cfg, "val", device="cuda")
    vplan = val_batch_plan(val.trials_by_day, cfg["dataset"]["batch_size"],
                           day_mask=[p != 0 for p in cfg["dataset"]["dataset_probability_val"]])
"""
from .phonemes import (BLANK_ID, N_CLASSES, PHONEME_TO_ID, PHONEMES, SILENCE, SILENCE_ID,
                       ids_to_phonemes, phonemes_to_ids)
from .files import session_labels
from .plan import BatchPlan, TrainBatchPlan, train_batch_plan, val_batch_plan
from .t15 import (PAD_LEN, SPLIT_FILES, SPLITS, BadTrial, DataError, DataWarning, Trial, TrialMeta,
                  read_session_file, session_file, session_paths, trial_name, write_session_file)

__all__ = [
    "PHONEMES", "PHONEME_TO_ID", "N_CLASSES", "BLANK_ID", "SILENCE_ID", "SILENCE",
    "phonemes_to_ids", "ids_to_phonemes",
    "BatchPlan", "TrainBatchPlan", "train_batch_plan", "val_batch_plan",
    "TrialStore", "SessionSource", "PackedSplit", "load_split", "placement",
    "DataError", "DataWarning", "BadTrial", "Trial", "TrialMeta", "PAD_LEN", "SPLITS", "SPLIT_FILES",
    "session_paths", "session_file", "session_labels", "read_session_file", "write_session_file",
    "trial_name",
]


def __getattr__(name):
    # TrialStore and the loader need torch; importing them lazily keeps `fastbci synth`
    # and the HDF5 helpers free of the torch import time.
    if name in ("TrialStore", "SessionSource", "placement"):
        from . import store
        return getattr(store, name)
    if name in ("PackedSplit", "load_split"):
        from . import load
        return getattr(load, name)
    raise AttributeError(f"module 'fastbci.data' has no attribute {name!r}")
