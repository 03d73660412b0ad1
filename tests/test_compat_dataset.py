"""fastbci.compat BrainToTextDataset / train_test_split_indicies vs the official behaviour.

The reference below re-implements the official loader from docs/recipe.md section 2 and the official
signatures: trial-index dicts, np.random draws on the global generator, HDF5 files re-opened for
every batch, trials padded with pad_sequence. The compat classes must give identical batches
(keys, dtypes, values), identical splits, and leave the global generators in the same state.
"""
import math
import os

import h5py
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from fastbci.compat.dataset import BrainToTextDataset, train_test_split_indicies
from fastbci.data import DataError
from fastbci.synth import write_release

SESSIONS = ["t15.2023.08.11", "t15.2023.08.13", "t15.2023.08.18", "t15.2023.08.20"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat")
    write_release(root, sessions=SESSIONS, n_train=[6, 9, 4, 7], n_val=3, n_test=2, neural_dim=12,
                  seed=5, min_words=1, max_words=3)
    return root


def _paths(root, split):
    return [os.path.join(str(root), s, f"data_{split}.hdf5") for s in SESSIONS]


# ---- the reference ------------------------------------------------------------------------------
def ref_split(file_paths, test_percentage, seed, bad_trials_dict=None):
    if seed != -1:
        np.random.seed(seed)
    train, test = {}, {}
    for day, path in enumerate(file_paths):
        session = [p for p in path.split("/") if p.startswith("t15.20")][0]
        good = []
        if os.path.exists(path):
            with h5py.File(path, "r") as f:
                for t in range(len(f.keys())):
                    a = f[f"trial_{t:04d}"].attrs
                    bad = (bad_trials_dict is not None and session in bad_trials_dict
                           and str(a["block_num"]) in bad_trials_dict[session]
                           and a["trial_num"] in bad_trials_dict[session][str(a["block_num"])])
                    if not bad:
                        good.append(t)
        if test_percentage == 0:
            train[day], test[day] = good, []
        elif test_percentage == 1:
            train[day], test[day] = [], good
        else:
            n_test = max(1, int(len(good) * test_percentage))
            picked = np.random.choice(good, size=n_test, replace=False).tolist()
            train[day], test[day] = [t for t in good if t not in picked], picked
    wrap = lambda d: {k: {"trials": v, "session_path": file_paths[k]} for k, v in d.items()}
    return wrap(train), wrap(test)


def ref_index_train(trial_indicies, n_batches, batch_size, days_per_batch, seed):
    if seed != -1:
        np.random.seed(seed)
        torch.manual_seed(seed)
    index = []
    for _ in range(n_batches):
        days = np.random.choice(list(trial_indicies.keys()), size=days_per_batch, replace=False)
        n = math.ceil(batch_size / days_per_batch)
        b = {d: np.random.choice(trial_indicies[d]["trials"], size=n, replace=True) for d in days}
        extra = n * len(days) - batch_size
        while extra > 0:
            d = np.random.choice(days)
            b[d] = b[d][:-1]
            extra -= 1
        index.append(b)
    return index


def ref_index_val(trial_indicies, batch_size, seed):
    if seed != -1:
        np.random.seed(seed)
        torch.manual_seed(seed)
    index = []
    for d, v in trial_indicies.items():
        t = v["trials"]
        for i in range(0, len(t), batch_size):
            index.append({d: t[i:i + batch_size]})
    return index


def ref_batch(trial_indicies, index):
    """Open the files again, read every trial, pad: the official __getitem__."""
    cols = {k: [] for k in ("input_features", "seq_class_ids", "n_time_steps", "phone_seq_lens",
                            "day_indicies", "transcriptions", "block_nums", "trial_nums")}
    for d, trials in index.items():
        with h5py.File(trial_indicies[d]["session_path"], "r") as f:
            for t in trials:
                g = f[f"trial_{t:04d}"]
                cols["input_features"].append(torch.from_numpy(g["input_features"][:]))
                cols["seq_class_ids"].append(torch.from_numpy(g["seq_class_ids"][:]))
                cols["transcriptions"].append(torch.from_numpy(g["transcription"][:]))
                cols["n_time_steps"].append(g.attrs["n_time_steps"])
                cols["phone_seq_lens"].append(g.attrs["seq_len"])
                cols["day_indicies"].append(int(d))
                cols["block_nums"].append(g.attrs["block_num"])
                cols["trial_nums"].append(g.attrs["trial_num"])
    out = {"input_features": pad_sequence(cols["input_features"], batch_first=True),
           "seq_class_ids": pad_sequence(cols["seq_class_ids"], batch_first=True),
           "transcriptions": torch.stack(cols["transcriptions"])}
    for k in ("n_time_steps", "phone_seq_lens", "day_indicies", "block_nums", "trial_nums"):
        out[k] = torch.tensor(cols[k])
    return {k: out[k] for k in cols}


def assert_same_batch(got, exp, where):
    assert list(got) == list(exp), f"{where}: keys {list(got)} != {list(exp)}"
    for k in exp:
        g, e = got[k], exp[k]
        assert g.dtype == e.dtype and g.shape == e.shape, f"{where} {k}: {g.dtype}{tuple(g.shape)} vs {e.dtype}{tuple(e.shape)}"
        if not torch.equal(g, e):
            bad = (g != e).nonzero()
            raise AssertionError(f"{where} {k}: {len(bad)} elements differ, first at {bad[0].tolist()}")


# ---- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tp,seed", [(0, 1), (1, 1), (0.1, 1), (0.34, 7), (0.5, -1)])
def test_split_equals_official(release, tp, seed):
    bad = {SESSIONS[1]: {"1": [0, 2, 4]}}
    for split, bad_dict in (("train", None), ("train", bad), ("val", None)):
        paths = _paths(release, split)
        if tp not in (0, 1) and split == "val":
            continue  # the train-only session has no val file: nothing to split (checked below)
        np.random.seed(123)
        exp = ref_split(paths, tp, seed, bad_dict)
        exp_state = np.random.get_state()[1].copy()
        np.random.seed(123)
        got = train_test_split_indicies(paths, test_percentage=tp, seed=seed, bad_trials_dict=bad_dict)
        assert got == exp, f"{split} tp={tp} seed={seed}"
        np.testing.assert_array_equal(np.random.get_state()[1], exp_state)
    with pytest.raises(ValueError, match="has no trials to split"):
        train_test_split_indicies(_paths(release, "val"), test_percentage=0.2, seed=1)


def test_split_bad_path(tmp_path):
    with pytest.raises(ValueError, match="cannot find the session in path"):
        train_test_split_indicies([str(tmp_path / "x" / "data_train.hdf5")], 0, 1)


@pytest.mark.parametrize("bs,dpb,seed", [(8, 2, 1), (7, 3, 1), (5, 4, 11), (3, 1, 2)])
def test_train_batches_equal_official(release, bs, dpb, seed):
    train, _ = train_test_split_indicies(_paths(release, "train"), test_percentage=0, seed=seed)
    n_batches = 12
    ref_index = ref_index_train(train, n_batches, bs, dpb, seed)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    np.random.seed(4242)
    torch.manual_seed(4242)
    ds = BrainToTextDataset(train, n_batches, split="train", batch_size=bs, days_per_batch=dpb,
                            random_seed=seed)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert len(ds) == n_batches
    idx = ds.batch_index
    for k in range(n_batches):
        assert list(idx[k]) == list(ref_index[k]), f"batch {k}: day order"
        for d in ref_index[k]:
            np.testing.assert_array_equal(idx[k][d], ref_index[k][d])
        assert_same_batch(ds[k], ref_batch(train, ref_index[k]), f"train batch {k}")


def test_val_batches_equal_official(release):
    _, val = train_test_split_indicies(_paths(release, "val"), test_percentage=1, seed=1)
    ref_index = ref_index_val(val, 2, 1)
    ds = BrainToTextDataset(val, None, split="test", batch_size=2, days_per_batch=None, random_seed=1)
    assert len(ds) == len(ref_index) == 6   # the train-only day has no val file: no batch
    for k in range(len(ds)):
        assert ds.batch_index[k] == ref_index[k]
        assert_same_batch(ds[k], ref_batch(val, ref_index[k]), f"val batch {k}")


def test_feature_subset_and_subset_of_trials(release):
    train, test = train_test_split_indicies(_paths(release, "train"), test_percentage=0.3, seed=3)
    ds = BrainToTextDataset(test, 4, split="train", batch_size=6, days_per_batch=2, random_seed=3,
                            feature_subset=[11, 0, 5])
    ref_index = ref_index_train(test, 4, 6, 2, 3)
    for k in range(4):
        exp = ref_batch(test, ref_index[k])
        exp["input_features"] = pad_sequence([torch.from_numpy(
            h5py.File(test[d]["session_path"], "r")[f"trial_{t:04d}"]["input_features"][:][:, [11, 0, 5]])
            for d, ts in ref_index[k].items() for t in ts], batch_first=True)
        assert_same_batch(ds[k], exp, f"subset batch {k}")


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 4 workers on a small CI box
@pytest.mark.parametrize("workers", [0, 4])
def test_dataloader_batches_equal_official_even_when_all_are_kept(release, workers):
    """The official loader settings (batch_size=None, 4 workers, pinned memory when there is a
    GPU) and a consumer that keeps every batch: none is overwritten by a later one."""
    train, _ = train_test_split_indicies(_paths(release, "train"), test_percentage=0, seed=1)
    n_batches = 10
    ds = BrainToTextDataset(train, n_batches, split="train", batch_size=8, days_per_batch=2,
                            random_seed=1)
    assert ds.store.features.is_shared()
    ref_index = ref_index_train(train, n_batches, 8, 2, 1)
    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                        pin_memory=torch.cuda.is_available())
    kept = list(loader)
    assert len(kept) == n_batches
    for k, batch in enumerate(kept):
        assert_same_batch({key: v.cpu() for key, v in batch.items()}, ref_batch(train, ref_index[k]),
                          f"loader batch {k} ({workers} workers)")


def test_feature_buffers_are_reused_only_when_released(release):
    train, _ = train_test_split_indicies(_paths(release, "train"), test_percentage=0, seed=1)
    ds = BrainToTextDataset(train, 12, split="train", batch_size=8, days_per_batch=2, random_seed=1)
    ref_index = ref_index_train(train, 12, 8, 2, 1)
    # kept batches (and a view of one) stay intact while later ones are assembled
    kept = [ds[k] for k in range(6)]
    part = kept[0]["input_features"][:, :3]
    del kept[0]["input_features"]
    ptrs = {b["input_features"].data_ptr() for b in kept[1:]}
    assert len(ptrs) == 5, "two kept batches share a buffer"
    for k in range(1, 6):
        assert_same_batch(kept[k], ref_batch(train, ref_index[k]), f"kept batch {k}")
    assert torch.equal(part, ref_batch(train, ref_index[0])["input_features"][:, :3])
    # a released batch's buffer serves the next one (no fresh allocation per batch)
    del kept, part
    first = ds[6]["input_features"].data_ptr()
    for k in range(7, 12):
        batch = ds[k]
        assert batch["input_features"].data_ptr() == first, f"batch {k}: buffer not reused"
        assert_same_batch(batch, ref_batch(train, ref_index[k]), f"batch {k}")
        del batch


def test_errors(release):
    train, _ = train_test_split_indicies(_paths(release, "train"), test_percentage=0, seed=1)
    with pytest.raises(ValueError, match='split must be either "train" or "test"'):
        BrainToTextDataset(train, 2, split="val")
    with pytest.raises(ValueError, match="days_per_batch: 5 is greater than available days 4"):
        BrainToTextDataset(train, 2, days_per_batch=5)
    with pytest.raises(ValueError, match="must_include_days must be less than or equal"):
        BrainToTextDataset(train, 2, days_per_batch=1, must_include_days=[0, 1])
    broken = {0: {"trials": [0, 1], "session_path": str(release / "t15.2099.01.01" / "data_train.hdf5")}}
    with pytest.raises(DataError, match="does not exist"):
        BrainToTextDataset(broken, 2)
    missing = {0: {"trials": [0, 99], "session_path": train[0]["session_path"]}}
    with pytest.raises(DataError, match="trial_0099: trial group requested but absent"):
        BrainToTextDataset(missing, 2)
    # must_include_days: the listed day leads every batch, as official
    ds = BrainToTextDataset(train, 5, batch_size=4, days_per_batch=2, random_seed=1, must_include_days=[-1])
    assert all(list(ds.batch_index[k])[0] == 3 for k in range(5))
