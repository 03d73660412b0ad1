"""fastbci::gather_padded_ (csrc/gather.cpp), the host gather of TrialStore.batch: the same
batches as the index_select path for any rows, padding and dtype, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fastbci.data.store as store_mod

pytestmark = pytest.mark.skipif(store_mod._native_gather() is None,
                                reason="fastbci._C is not built")

C = 6


def packed_case(seed=0, n=7, dtype=torch.float32):
    g = np.random.default_rng(seed)
    lengths = g.integers(0, 9, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    packed = torch.from_numpy(g.standard_normal((int(offsets[-1]) + 1, C))).to(dtype)
    packed[-1] = 0  # the store's zero row
    return packed, torch.from_numpy(offsets), torch.from_numpy(lengths.astype(np.int64))


def padded_by_hand(packed, offsets, lengths, rows, t_max):
    out = torch.zeros(len(rows), t_max, packed.shape[1], dtype=packed.dtype)
    for b, r in enumerate(rows.tolist()):
        n = int(lengths[r])
        out[b, :n] = packed[int(offsets[r]):int(offsets[r]) + n]
    return out


@pytest.mark.parametrize("rows", [[3, 0, 3, 6], [5], [], [1, 2, 4, 0, 6, 5, 3]])
@pytest.mark.parametrize("extra", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int16])
def test_gather_equals_padding_by_hand(rows, extra, dtype):
    packed, offsets, lengths = packed_case(dtype=dtype)
    rows = torch.tensor(rows, dtype=torch.int64)
    t_max = (int(lengths[rows].max()) if len(rows) else 0) + extra
    out = torch.full((len(rows), t_max, C), 7, dtype=dtype)  # stale values must be overwritten
    got = torch.ops.fastbci.gather_padded_(packed, offsets, lengths, rows, t_max, out)
    assert got is out
    assert torch.equal(out, padded_by_hand(packed, offsets, lengths, rows, t_max))


def test_store_batch_native_equals_index_select(monkeypatch, tmp_path):
    from fastbci.data import TrialStore
    from fastbci.synth import write_release
    summ = write_release(tmp_path, sessions=2, n_train=5, n_val=0, n_test=0, neural_dim=C,
                         seed=3, train_only=[])
    from fastbci.config import load_config
    store = TrialStore.from_config(load_config(summ["config"]), "train", progress=False)
    rows = np.array([4, 0, 7, 7, 2])
    native = store.batch(rows, pad_to=int(store.lengths_np[rows].max()) + 2)
    buf = torch.full((len(rows) * int(store.lengths_np[rows].max()) * C + 5,), 5.0)
    native_out = store.batch(rows, out=buf)["input_features"]
    monkeypatch.setattr(store_mod, "_GATHER", [None])
    plain = store.batch(rows, pad_to=int(store.lengths_np[rows].max()) + 2)
    plain_out = store.batch(rows)["input_features"]
    for key in plain:
        assert torch.equal(native[key], plain[key]), key
    assert torch.equal(native_out, plain_out) and native_out.data_ptr() == buf.data_ptr()


def test_gather_errors():
    packed, offsets, lengths = packed_case()
    op = torch.ops.fastbci.gather_padded_
    rows = torch.tensor([0, 1])
    t_max = int(lengths[:2].max())
    out = torch.empty(2, t_max, C)
    with pytest.raises(RuntimeError, match=r"rows\[1\] = 9 is not a trial"):
        op(packed, offsets, lengths, torch.tensor([0, 9]), t_max, out)
    long = int(lengths.argmax())
    with pytest.raises(RuntimeError, match="more than t_max"):
        op(packed, offsets, lengths, torch.tensor([long]), 0, torch.empty(1, 0, C))
    with pytest.raises(RuntimeError, match="out must be a contiguous"):
        op(packed, offsets, lengths, rows, t_max, torch.empty(2, t_max + 1, C))
    with pytest.raises(RuntimeError, match="out must be a contiguous"):
        op(packed, offsets, lengths, rows, t_max, out.double())
    with pytest.raises(RuntimeError, match="rows must be a contiguous 1-D int64"):
        op(packed, offsets, lengths, rows.int(), t_max, out)
    with pytest.raises(RuntimeError, match="lies outside"):  # a packed tensor of one row
        op(packed[:1], offsets, lengths, torch.tensor([long]), int(lengths[long]),
           torch.empty(1, int(lengths[long]), C))
