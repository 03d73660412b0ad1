"""The data files say what is wrong and where: a path that is a directory or a link loop, a
file that is not HDF5, a session without training trials, an id beyond n_classes; skipped
trials are one warning line without fastbci's source (issue #22, items 7, 10, 12, 13)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from fastbci.config import load_config
from fastbci.data import DataError, Trial, TrialStore, train_batch_plan, write_session_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def afile(tmp_path):
    (tmp_path / "afile").write_text("key: 1\n")
    return tmp_path / "afile"


SESSIONS = ["t15.2023.08.13", "t15.2023.08.18"]


def _release(root, *, empty_session=None):
    rng = np.random.default_rng(0)
    for s in SESSIONS:
        for split in ("train", "val"):
            n = 0 if s == empty_session and split == "train" else 3
            trials = [Trial(input_features=rng.standard_normal((80, 8)).astype(np.float32),
                            block_num=1, trial_num=i, session=s, seq_class_ids=[3, 5, 7],
                            transcription=[72], sentence_label="Hi") for i in range(n)]
            write_session_file(root / s / f"data_{split}.hdf5", trials, split)


def _cfg(root, *extra):
    return load_config(None, [f"dataset.dataset_dir={root}", f"dataset.sessions={SESSIONS}",
                              "dataset.dataset_probability_val=[1,1]", "dataset.neural_dim=8",
                              "model.n_input_features=8", "model.input_network.input_layer_sizes=[8]",
                              "dataset.days_per_batch=2", *extra])


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("make,words", [
    (lambda p: (p.unlink(), p.mkdir()), "is a directory, not a file"),
    (lambda p: (p.unlink(), os.symlink(p, p)), "symbolic link loop"),
    (lambda p: (p.unlink(), os.symlink(p.parent / "gone.hdf5", p)), "broken symbolic link"),
], ids=["directory", "loop", "broken link"])
def test_a_data_path_that_is_not_a_file_is_named(tmp_path, split, make, words):
    _release(tmp_path)
    p = tmp_path / SESSIONS[1] / f"data_{split}.hdf5"
    make(p)
    with pytest.raises(DataError) as e:
        TrialStore.from_config(_cfg(tmp_path), split, progress=False)
    msg = str(e.value)
    assert f"session '{SESSIONS[1]}'" in msg and str(p) in msg and words in msg, msg
    assert "not found" not in msg


@pytest.mark.parametrize("raw,words", [(b"", "not an HDF5 file but empty (0 bytes)"),
                                       (b"trial,feature\n1,2\n", "not an HDF5 file but text"),
                                       (b"\x89HDF\r\n\x1a\n" + bytes(100), "a corrupt HDF5 file")])
def test_a_data_file_that_is_not_hdf5_is_named(tmp_path, raw, words):
    _release(tmp_path)
    p = tmp_path / SESSIONS[0] / "data_train.hdf5"
    p.write_bytes(raw)
    with pytest.raises(DataError) as e:
        TrialStore.from_config(_cfg(tmp_path), "train", progress=False)
    assert str(e.value).startswith(f"cannot open {p} (session {SESSIONS[0]}): it is {words}"), \
        str(e.value)


def test_the_dataset_dir_that_is_a_file_is_named(afile):
    with pytest.raises(DataError, match=r"dataset.dataset_dir .*afile' is a file, not a folder"):
        TrialStore.from_config(_cfg(afile), "train", progress=False)


# -- 10. a valid file with no trial -------------------------------------------------------------
def test_a_session_with_an_empty_train_file_is_named_with_its_file(tmp_path):
    from fastbci.data import session_labels
    _release(tmp_path, empty_session=SESSIONS[1])
    store = TrialStore.from_config(_cfg(tmp_path), "train", progress=False)
    assert [len(t) for t in store.trials_by_day] == [3, 0]
    with pytest.raises(ValueError) as e:
        train_batch_plan(store.trials_by_day, 4, 2, 1, 1,
                         day_names=session_labels(store.sessions, store.files))
    msg = str(e.value)
    assert f"session {SESSIONS[1]} ({tmp_path / SESSIONS[1] / 'data_train.hdf5'})" in msg, msg
    assert SESSIONS[0] not in msg and "dataset.sessions" in msg


# -- 7. an id beyond n_classes names the key -----------------------------------------------------
def test_an_id_beyond_n_classes_names_the_key(tmp_path):
    _release(tmp_path)
    with pytest.raises(DataError, match=r"outside 1\.\.4: \[5, 7\] \(.*dataset.n_classes is 5\)"):
        TrialStore.from_config(_cfg(tmp_path, "dataset.n_classes=5"), "train", progress=False)


# -- 13. warnings without fastbci's source lines, no numpy note beside fastbci's message ---------
_LOAD = r'''
import sys
from fastbci.config import load_config
from fastbci.data import TrialStore
cfg = load_config(sys.argv[1], ["fastbci.bad_trial_policy=skip"])
store = TrialStore.from_config(cfg, "train", progress=False)
print("trials", store.n_trials)
'''


def test_skipped_trials_and_float32_overflow_are_one_line_each_in_a_child(tmp_path):
    from fastbci import synth
    synth.write_release(tmp_path, **synth.PRESETS["small"], seed=2)
    with h5py.File(tmp_path / "t15.2023.08.18" / "data_train.hdf5", "r+") as f:
        f["trial_0001"].attrs["n_time_steps"] = 3
        g = f["trial_0002"]
        x = g["input_features"][()].astype(np.float64)
        x[0, 1] = 1e300
        del g["input_features"]
        g.create_dataset("input_features", data=x)
    proc = subprocess.run([sys.executable, "-c", _LOAD, str(tmp_path / "synth_config.yaml")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fastbci: warning: train: 2 bad trial(s) skipped"), lines[0]
    assert "beyond the float32 range (first at time 0, feature 1: 1e+300 as float64)" in lines[0]
    assert "overflow encountered" not in proc.stderr and ".py:" not in proc.stderr
