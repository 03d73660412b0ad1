"""Every bad-input case of the t15 loader: a clear error naming session, file and trial, or, with
bad_trial_policy: skip, a counted skip with its reason (never a silent drop)."""
import h5py
import numpy as np
import pytest

from fastbci.config import load_config
from fastbci.data import DataError, DataWarning, Trial, TrialStore, write_session_file

SESSIONS = ["t15.2023.08.13", "t15.2023.08.18"]
WIDTH = 8
N = 4


def _write_release(root):
    rng = np.random.default_rng(0)
    for s in SESSIONS:
        for split, n in (("train", N), ("val", 2)):
            trials = []
            for i in range(n):
                T = int(rng.integers(16, 40)) + 60  # long enough for 14/4 patching and CTC
                ids = rng.integers(1, 41, size=int(rng.integers(2, 9))).astype(np.int32)
                trials.append(Trial(input_features=rng.standard_normal((T, WIDTH)).astype(np.float32),
                                    block_num=1, trial_num=i, session=s, seq_class_ids=ids,
                                    transcription=np.array([72, 105], np.int32), sentence_label="Hi"))
            write_session_file(root / s / f"data_{split}.hdf5", trials, split)


def _cfg(root, policy="fail", **ds):
    cfg = load_config(None, [f"fastbci.bad_trial_policy={policy}"])
    cfg["dataset"].update(dataset_dir=str(root), sessions=list(SESSIONS), neural_dim=WIDTH,
                          dataset_probability_val=[1, 1], **ds)
    return cfg


def _group(root, trial="trial_0002"):
    return h5py.File(root / SESSIONS[1] / "data_train.hdf5", "r+"), trial


def _replace(g, name, data, **kw):
    del g[name]
    g.create_dataset(name, data=data, **kw)


def m_missing_group(f, t):
    del f[t]


def m_width(f, t):
    _replace(f[t], "input_features", np.zeros((f[t].attrs["n_time_steps"], WIDTH + 1), np.float32))


def m_n_time_steps(f, t):
    f[t].attrs["n_time_steps"] = int(f[t].attrs["n_time_steps"]) + 3


def m_seq_len_too_big(f, t):
    f[t].attrs["seq_len"] = 501


def m_seq_len_short(f, t):          # non-zero ids after seq_len
    f[t].attrs["seq_len"] = int(f[t].attrs["seq_len"]) - 1


def m_seq_len_long(f, t):           # a padding zero inside the first seq_len ids
    f[t].attrs["seq_len"] = int(f[t].attrs["seq_len"]) + 1


def m_bad_id(f, t):
    ids = f[t]["seq_class_ids"][()]
    ids[0] = 57
    _replace(f[t], "seq_class_ids", ids)


def m_no_features(f, t):
    del f[t]["input_features"]


def m_no_attr(f, t):
    del f[t].attrs["block_num"]


def m_nan(f, t):
    x = f[t]["input_features"][()]
    x[3, 5] = np.nan
    _replace(f[t], "input_features", x)


def m_unreadable(f, t):
    """A compressed dataset whose chunk bytes are overwritten: HDF5 cannot decode it."""
    x = f[t]["input_features"][()]
    _replace(f[t], "input_features", x, chunks=x.shape, compression="gzip")
    info = f[t]["input_features"].id.get_chunk_info(0)
    f.flush()
    name = f.filename
    f.close()
    with open(name, "r+b") as raw:
        raw.seek(info.byte_offset)
        raw.write(b"\xff" * info.size)


def m_stray_object(f, t):
    f.create_group("notes")


CASES = [
    (m_missing_group, "not contiguous", "trial_0002"),
    (m_width, "feature width 9 does not match dataset.neural_dim = 8", "trial_0002"),
    (m_n_time_steps, "n_time_steps", "trial_0002"),
    (m_seq_len_too_big, "larger than the padded", "trial_0002"),
    (m_seq_len_short, "inconsistent with seq_class_ids: non-zero id", "trial_0002"),
    (m_seq_len_long, "inconsistent with seq_class_ids: a zero", "trial_0002"),
    (m_bad_id, "outside 1..40", "trial_0002"),
    (m_no_features, "input_features missing", "trial_0002"),
    (m_no_attr, "block_num missing", "trial_0002"),
    (m_nan, "non-finite", "trial_0002"),
    (m_unreadable, "unreadable", "trial_0002"),
    (m_stray_object, "unexpected top-level object", "notes"),
]


@pytest.mark.parametrize("mutate,reason,trial", CASES, ids=[c[0].__name__ for c in CASES])
@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_bad_trial(tmp_path, mutate, reason, trial, policy):
    _write_release(tmp_path)
    f, t = _group(tmp_path)
    try:
        mutate(f, t)
    finally:
        if f.id.valid:
            f.close()
    path = tmp_path / SESSIONS[1] / "data_train.hdf5"
    cfg = _cfg(tmp_path, policy)
    if policy == "fail":
        with pytest.raises(DataError) as e:
            TrialStore.from_config(cfg, "train", progress=False)
        msg = str(e.value)
        assert reason in msg and str(path) in msg and SESSIONS[1] in msg and trial in msg, msg
        assert (e.value.session, e.value.file, e.value.trial) == (SESSIONS[1], str(path), trial)
        return
    with pytest.warns(DataWarning, match=r"train: 1 bad trial\(s\) skipped") as w:
        store = TrialStore.from_config(cfg, "train", progress=False)
    assert trial in str(w[0].message) and reason in str(w[0].message)
    assert len(store.skipped) == 1, store.skipped
    b = store.skipped[0]
    assert (b.session, b.file, b.trial) == (SESSIONS[1], str(path), trial) and reason in b.reason
    n_day1 = N if trial == "notes" else N - 1
    assert [len(t) for t in store.trials_by_day] == [N, n_day1]
    assert "skipped" in store.summary() and reason in store.summary()
    if trial != "notes":
        assert 2 not in store.trial_index[store.trials_by_day[1]]
    # the kept trials are intact and the batch still assembles
    assert store.gather(np.arange(store.n_trials)).shape[0] == store.n_trials


def test_corrupt_file_is_fatal_under_both_policies(tmp_path):
    _write_release(tmp_path)
    path = tmp_path / SESSIONS[0] / "data_train.hdf5"
    path.write_bytes(b"this is not an HDF5 file" * 10)
    for policy in ("fail", "skip"):
        with pytest.raises(DataError,
                           match=r"cannot open .*data_train\.hdf5.*not an HDF5 file but text") as e:
            TrialStore.from_config(_cfg(tmp_path, policy), "train", progress=False)
        assert e.value.session == SESSIONS[0]


def test_missing_train_file_is_an_error(tmp_path):
    _write_release(tmp_path)
    (tmp_path / SESSIONS[1] / "data_train.hdf5").unlink()
    with pytest.raises(DataError, match=rf"{SESSIONS[1]}.*data_train\.hdf5 not found"):
        TrialStore.from_config(_cfg(tmp_path, "skip"), "train", progress=False)


def test_missing_val_file_means_zero_trials(tmp_path):
    _write_release(tmp_path)
    (tmp_path / SESSIONS[0] / "data_val.hdf5").unlink()
    store = TrialStore.from_config(_cfg(tmp_path), "val", progress=False)
    assert [len(t) for t in store.trials_by_day] == [0, 2]
    assert store.files[0] is None and store.skipped == []


def test_feature_subset_and_bad_trials_dict(tmp_path):
    _write_release(tmp_path)
    cfg = _cfg(tmp_path, feature_subset=[6, 1, 2], bad_trials_dict={SESSIONS[0]: {"1": [0, 3]}})
    with pytest.raises(DataError, match="feature_subset selects 3 features"):
        TrialStore.from_config(cfg, "train", progress=False)
    cfg["dataset"]["neural_dim"] = 3
    store = TrialStore.from_config(cfg, "train", progress=False)
    assert store.n_features == 3
    assert [len(t) for t in store.trials_by_day] == [N - 2, N]
    assert len(store.excluded) == 2 and store.skipped == []
    with h5py.File(tmp_path / SESSIONS[0] / "data_train.hdf5", "r") as f:
        x = f["trial_0001"]["input_features"][()]
    np.testing.assert_array_equal(store.trial(0).numpy(), x[:, [6, 1, 2]])
    cfg["dataset"]["feature_subset"] = [0, 1, 99]
    with pytest.raises(DataError, match="outside the file's 8 features"):
        TrialStore.from_config(cfg, "train", progress=False)


def _shorten(root, session, split, trial, T, ids=None):
    with h5py.File(root / session / f"data_{split}.hdf5", "r+") as f:
        g = f[trial]
        _replace(g, "input_features", np.zeros((T, WIDTH), np.float32))
        g.attrs["n_time_steps"] = T
        if ids is not None:
            seq = np.zeros(500, np.int32)
            seq[:len(ids)] = ids
            _replace(g, "seq_class_ids", seq)
            g.attrs["seq_len"] = len(ids)


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("case,T,ids,reason", [
    ("shorter than a patch", 10, None, "shorter than one patch of 14 steps"),
    ("too short for CTC", 30, [5, 6, 7, 8, 9, 10], "too short for CTC"),
    ("repeats need blanks", 30, [5, 5, 5, 5], "which need 7"),
])
def test_trials_too_short_for_the_model_are_caught_at_load(tmp_path, split, case, T, ids, reason):
    """A trial shorter than one patch, or with fewer patched frames than CTC needs, is a bad
    trial at load (a train one used to stop the run at a later batch; a val one made every
    validation loss infinite), under the bad-trial policy."""
    _write_release(tmp_path)
    _shorten(tmp_path, SESSIONS[1], split, "trial_0001", T, ids)
    cfg = _cfg(tmp_path)
    with pytest.raises(DataError, match=reason) as e:
        TrialStore.from_config(cfg, split, progress=False)
    msg = str(e.value)
    assert SESSIONS[1] in msg and "trial_0001" in msg and f"data_{split}.hdf5" in msg, msg
    with pytest.warns(DataWarning):
        store = TrialStore.from_config(_cfg(tmp_path, "skip"), split, progress=False)
    assert [(b.session, b.trial) for b in store.skipped] == [(SESSIONS[1], "trial_0001")]
    assert reason.split(" (")[0] in store.skipped[0].reason


def test_the_random_cut_counts_for_train_only(tmp_path):
    """Train trials must fit after the largest cut (random_cut - 1 steps); val trials see none."""
    _write_release(tmp_path)
    ids = [5, 6, 7]  # 3 frames needed: (T - cut - 14) // 4 + 1 >= 3 -> T - cut >= 22
    for split in ("train", "val"):
        _shorten(tmp_path, SESSIONS[0], split, "trial_0000", 23, ids)
    assert TrialStore.from_config(_cfg(tmp_path), "val", progress=False).n_trials == 4
    with pytest.raises(DataError, match="after a random cut of up to 2 steps"):
        TrialStore.from_config(_cfg(tmp_path), "train", progress=False)


# -- a trial too short only because of the random cut names the cut (fastbci.data.lengths) --------
def _meta(T, ids=None):
    from fastbci.data import TrialMeta
    seq = None if ids is None else np.asarray(list(ids) + [0] * (500 - len(ids)), np.int32)
    return TrialMeta(index=0, n_time_steps=T, width=WIDTH, block_num=1, trial_num=0, session="s",
                     seq_class_ids=seq, seq_len=None if ids is None else len(ids))


@pytest.mark.parametrize("patch,max_cut,T,ids,blame,largest", [
    ((14, 4), 99_999, 80, None, "random_cut", 67),          # the random_cut=100000
    ((14, 4), 2, 23, [5, 6, 7], "random_cut", 2),           # CTC frames lost to the cut
    ((0, 0), 4, 5, [5, 6, 7], "random_cut", 3),             # no patching
    ((14, 4), 2, 10, None, "model.patch_size", None),       # too short even uncut
    ((14, 4), 2, 30, [5, 6, 7, 8, 9, 10], "too short for CTC", None),
])
def test_the_length_rule_blames_the_key_to_change(patch, max_cut, T, ids, blame, largest):
    from fastbci.data.lengths import trial_length_rule
    reason = trial_length_rule(*patch, max_cut)(_meta(T, ids))
    assert reason is not None and blame in reason, reason
    if largest is not None:
        assert "model.patch_size" not in reason
        assert f"dataset.data_transforms.random_cut = {max_cut + 1}" in reason, reason
        assert reason.endswith(f"set dataset.data_transforms.random_cut to at most {largest} to "
                               "keep this trial"), reason
        assert trial_length_rule(*patch, largest - 1)(_meta(T, ids)) is None  # it does keep it
        assert trial_length_rule(*patch, largest)(_meta(T, ids)) is not None
    else:
        assert "random_cut" not in reason


def test_a_huge_random_cut_is_named_at_load(tmp_path):
    """random_cut=100000 through the loader (TrialStore.from_sources with the length rule of
    the configuration): the error names the cut, the session, the file and the trial."""
    from fastbci.data.lengths import length_rule_of
    from fastbci.data.store import SessionSource
    _write_release(tmp_path)
    cfg = _cfg(tmp_path)
    cfg["dataset"]["data_transforms"]["random_cut"] = 100_000
    sources = [SessionSource(d, s, tmp_path / s / "data_train.hdf5") for d, s in enumerate(SESSIONS)]
    with pytest.raises(DataError) as e:
        TrialStore.from_sources(sources, "train", neural_dim=WIDTH,
                                length_rule=length_rule_of(cfg, "train"))
    msg = str(e.value)
    assert SESSIONS[0] in msg and "data_train.hdf5" in msg and "trial_0000" in msg, msg
    assert "dataset.data_transforms.random_cut = 100000" in msg and "model.patch_size" not in msg
    assert length_rule_of(cfg, "val")(_meta(20)) is None  # validation trials are not cut
