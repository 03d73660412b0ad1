"""TrialStore: packed layout, one copy of each field, one-gather batches equal to reading and
padding each trial (and the official batch dict of fastbci.compat)."""
import dataclasses

import numpy as np
import pytest
import torch

from fastbci.compat.dataset import official_batch
from fastbci.config import load_config
from fastbci.data import TrialStore, read_session_file, session_paths
from fastbci.synth import write_release


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    summ = write_release(root, sessions=["t15.2023.08.13", "t15.2023.08.18", "t15.2024.03.03"],
                         n_train=[5, 1, 4], n_val=2, n_test=2, neural_dim=16, seed=3,
                         min_words=1, max_words=3)
    return load_config(summ["config"])


def _expected(cfg, split):
    """Every trial read on its own, in day then file order: the naive loader."""
    out = []
    for day, p in enumerate(session_paths(cfg, split)):
        if p is not None:
            out += [(day, t) for t in read_session_file(p, split)]
    return out


def _assert_equal(a, b, what):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
    if not torch.equal(a, b):
        bad = (a != b).nonzero()
        raise AssertionError(f"{what}: {len(bad)} elements differ, first at {bad[0].tolist()}")


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_packed_layout(release, split):
    store = TrialStore.from_config(release, split, progress=False)
    exp = _expected(release, split)
    assert store.n_trials == len(exp)
    assert store.features.shape == (sum(t.n_time_steps for _, t in exp), 16)
    assert store.offsets[0] == 0 and store.offsets[-1] == store.features.shape[0]
    for i, (day, t) in enumerate(exp):
        _assert_equal(store.trial(i), torch.from_numpy(t.input_features), f"trial {i} features")
        assert store.day[i] == day and store.lengths[i] == t.n_time_steps
        assert store.block_num_np[i] == t.block_num and store.trial_num_np[i] == t.trial_num
        assert store.session[i] == t.session
        if split != "test":
            _assert_equal(store.seq_class_ids[i], torch.from_numpy(t.seq_class_ids), "ids")
            assert store.sentence_label[i] == t.sentence_label and store.seq_len[i] == t.seq_len
    days = [d for d, _ in exp]
    assert [list(t) for t in store.trials_by_day] == [[i for i, d in enumerate(days) if d == k]
                                                      for k in range(3)]
    if split != "train":  # the train-only session has no val/test file: zero trials
        assert len(store.trials_by_day[2]) == 0 and store.files[2] is None


@pytest.mark.parametrize("split", ["train", "test"])
def test_one_copy_of_each_field_and_an_immutable_split(release, split):
    """On the CPU the device tensors are the split's own and the host arrays views of them:
    no field is held twice; the loaded split cannot be changed."""
    store = TrialStore.from_config(release, split, progress=False)
    d = store.data
    assert store.features.data_ptr() == d.packed.data_ptr()
    for name in ("offsets", "lengths", "day", "seq_class_ids", "seq_len"):
        t = getattr(store, name)
        if t is None:
            assert split == "test" and getattr(d, name) is None
            continue
        assert t is getattr(d, name), f"{name} is a copy"
        assert np.shares_memory(getattr(store, f"{name}_np"), t.numpy()), f"{name}_np is a copy"
    for name in ("block_num", "trial_num", "n_time_steps"):
        assert np.shares_memory(getattr(store, f"{name}_np"), getattr(d, name).numpy()), name
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.offsets = d.offsets + 1


@pytest.mark.parametrize("rows", [[0], [3, 3, 0], [7, 1, 2, 9, 4], list(range(10))[::-1]])
@pytest.mark.parametrize("pad_to", [None, 1700])
def test_batch_matches_naive_padding(release, rows, pad_to):
    store = TrialStore.from_config(release, "train", progress=False)
    exp = _expected(release, "train")
    b = official_batch(store, rows, pad_to=pad_to)
    assert list(b) == ["input_features", "seq_class_ids", "n_time_steps", "phone_seq_lens",
                       "day_indicies", "transcriptions", "block_nums", "trial_nums"]
    feats = [torch.from_numpy(exp[r][1].input_features) for r in rows]
    ref = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    if pad_to is not None:
        ref = torch.nn.functional.pad(ref, (0, 0, 0, pad_to - ref.shape[1]))
    _assert_equal(b["input_features"], ref, "input_features")
    _assert_equal(b["seq_class_ids"], torch.stack([torch.from_numpy(exp[r][1].seq_class_ids) for r in rows]), "ids")
    _assert_equal(b["transcriptions"], torch.stack([torch.from_numpy(exp[r][1].transcription) for r in rows]), "trans")
    _assert_equal(b["n_time_steps"], torch.tensor([exp[r][1].n_time_steps for r in rows]), "n_time_steps")
    _assert_equal(b["phone_seq_lens"], torch.tensor([exp[r][1].seq_len for r in rows]), "phone_seq_lens")
    _assert_equal(b["day_indicies"], torch.tensor([exp[r][0] for r in rows]), "day_indicies")
    _assert_equal(b["trial_nums"], torch.tensor([exp[r][1].trial_num for r in rows]), "trial_nums")
    # the padded features alone, also from a tensor of rows
    _assert_equal(store.gather(rows, pad_to=pad_to), ref, "gather")
    _assert_equal(store.gather(torch.tensor(rows), pad_to=pad_to), ref, "tensor rows")


def test_batch_errors_and_test_split(release):
    store = TrialStore.from_config(release, "train", progress=False)
    with pytest.raises(IndexError, match=r"rows \[10\] out of range for a store of 10 trials"):
        store.gather([0, 10])
    with pytest.raises(ValueError, match="pad_to = 3 is shorter"):
        store.gather([0], pad_to=3)
    test = TrialStore.from_config(release, "test", progress=False)
    assert set(official_batch(test, [0, 1])) == {"input_features", "n_time_steps", "day_indicies",
                                                 "block_nums", "trial_nums"}
    assert test.sentence_label == ("",) * test.n_trials


def test_to_and_shared_memory(release):
    store = TrialStore.from_config(release, "val", progress=False)
    ref = official_batch(store, [1, 0])
    moved = store.to("cpu")
    assert moved.features.data_ptr() == store.features.data_ptr()
    store.share_memory_()
    assert store.features.is_shared() and store.offsets.is_shared()
    assert moved.features.is_shared() and moved.seq_class_ids.is_shared()  # the same split
    for k, v in official_batch(store, [1, 0]).items():
        _assert_equal(v, ref[k], k)
    if torch.cuda.is_available():
        g = store.to("cuda")
        for k, v in official_batch(g, [1, 0]).items():
            _assert_equal(v.cpu(), ref[k], k)


def test_batch_into_reused_buffer(release):
    store = TrialStore.from_config(release, "train", progress=False)
    buf = torch.full((3 * 2000 * 16,), 7.0)
    for rows in ([2, 0, 1], [5], [9, 9]):
        ref = store.gather(rows)
        got = store.gather(rows, out=buf)
        _assert_equal(got, ref, f"out= rows {rows}")
        assert got.data_ptr() == buf.data_ptr()
    with pytest.raises(ValueError, match="out must be a contiguous float32 tensor"):
        store.gather([0, 1, 2], out=torch.zeros(10))
    with pytest.raises(ValueError, match="out must be a contiguous float32 tensor"):
        store.gather([0], out=torch.zeros(3 * 2000 * 16, dtype=torch.float64))
