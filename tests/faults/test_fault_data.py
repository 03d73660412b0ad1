"""The data family: a damaged release (corrupt, missing or short trials, files that are not
HDF5, symbolic-link loops, session names that are paths) stops the trainer before it trains,
with exit status 2 and a message naming the file (and the trial, the session or the name);
nothing of the release is changed and no run is left behind."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from faultkit import Case, check, command, train_argv

S1, S2 = "t15.2023.08.13", "t15.2023.08.18"  # two sessions of the small release


def _rewrite_trial(path, name, **changes):
    """Replace datasets / attributes of one trial group in place."""
    with h5py.File(path, "r+") as f:
        g = f[name]
        for key, value in changes.items():
            if key in g:
                del g[key]
                g.create_dataset(key, data=value)
            else:
                g.attrs[key] = value


def _corrupt(d):
    p = d / S2 / "data_train.hdf5"
    p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
    return [str(p), "corrupt HDF5"], []


def _not_hdf5(d):
    p = d / S2 / "data_val.hdf5"
    p.write_text("trial,features\n0,1 2 3\n")
    return [str(p), "not an HDF5 file", "text"], []


def _empty(d):
    p = d / S1 / "data_train.hdf5"
    p.write_bytes(b"")
    return [str(p), "empty (0 bytes)"], []


def _missing(d):
    p = d / S2 / "data_train.hdf5"
    p.unlink()
    return [f"session '{S2}'", str(p), "not found"], []


def _nan_features(d):
    p = d / S1 / "data_train.hdf5"
    with h5py.File(p, "r+") as f:
        f["trial_0003/input_features"][7, 2] = np.nan
    return [str(p), "trial_0003", "non-finite", "time 7, feature 2"], []


def _short_trial(d):
    p = d / S1 / "data_train.hdf5"
    _rewrite_trial(p, "trial_0002", input_features=np.zeros((5, 32), np.float32), n_time_steps=5)
    return [str(p), "trial_0002", "n_time_steps 5", "shorter than one patch"], []


def _bad_seq_len(d):
    p = d / S2 / "data_train.hdf5"
    _rewrite_trial(p, "trial_0001", seq_len=499)
    return [str(p), "trial_0001", "seq_len 499"], []


def _gap(d):
    p = d / S1 / "data_train.hdf5"
    with h5py.File(p, "r+") as f:
        del f["trial_0002"]
    return [str(p), "trial_0002", "not contiguous"], []


def _dataset_dir_loop(d):
    loop = d.parent / "loop"
    os.symlink(loop, loop)
    return ["dataset.dataset_dir", str(loop), "symbolic link loop"], [f"dataset.dataset_dir={loop}"]


def _session_folder_loop(d):
    folder = d / S2
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    os.symlink(folder, folder)
    return [f"session '{S2}'", str(folder / "data_train.hdf5"), "symbolic link loop"], []


def _data_file_loop(d):
    p = d / S1 / "data_val.hdf5"
    p.unlink()
    os.symlink(p, p)
    return [str(p), "symbolic link loop"], []


def _session_name_path(d):
    # the day that would be read from outside the release
    (d.parent / "elsewhere").mkdir()
    os.link(d / S1 / "data_train.hdf5", d.parent / "elsewhere" / "data_train.hdf5")
    return ["dataset.sessions[1]", "'../elsewhere'", "path separator"], \
        [f"dataset.sessions=[{S1}, ../elsewhere]", "dataset.dataset_probability_val=[1, 1]"]


def _session_name_absolute(d):
    return ["dataset.sessions[0]", f"'{d / S1}'", "an absolute path"], \
        [f"dataset.sessions=[{d / S1}]", "dataset.dataset_probability_val=[1]",
         "dataset.days_per_batch=1"]


CASES = {"corrupt-hdf5": _corrupt, "not-hdf5": _not_hdf5, "empty-file": _empty,
         "missing-train-file": _missing, "nan-features": _nan_features, "short-trial": _short_trial,
         "bad-seq-len": _bad_seq_len, "trial-numbering-gap": _gap,
         "dataset-dir-link-loop": _dataset_dir_loop, "session-folder-link-loop": _session_folder_loop,
         "data-file-link-loop": _data_file_loop, "session-name-is-a-path": _session_name_path,
         "session-name-is-absolute": _session_name_absolute}


@pytest.mark.parametrize("fault", list(CASES))
def test_data_fault(fault, data_copy, tmp_path, capsys):
    words, extra = CASES[fault](data_copy)
    out = tmp_path / "run"
    argv = train_argv(data_copy / "synth_config.yaml", out, *extra)
    check(Case(run=lambda: command("train")(argv), words=words, inputs=[tmp_path / "data"],
               outputs=[out]), capsys)
