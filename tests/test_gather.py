"""fastbci::gather_padded (csrc/gather.cpp), the padded gather of whole trials out of a packed
split: registered the extension-cpp way (schema and CPU kernel in C++, fake kernel in Python,
checked by opcheck), equal to padding by hand and to the pure-PyTorch reference for any rows,
padding and dtype; TrialStore.gather through it; clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastbci.ops import _ext
from fastbci.ops.gather import gather_padded
from fastbci.reference import gather_padded_ref

needs_ext = pytest.mark.skipif(not _ext.has_kernel("fastbci::gather_padded", "cpu"),
                               reason="fastbci._C is not built (or predates gather_padded)")

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


@needs_ext
@pytest.mark.parametrize("rows", [[3, 0, 3, 6], [5], [], [1, 2, 4, 0, 6, 5, 3]])
@pytest.mark.parametrize("extra", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int16])
def test_gather_equals_padding_by_hand(rows, extra, dtype):
    packed, offsets, lengths = packed_case(dtype=dtype)
    rows = torch.tensor(rows, dtype=torch.int64)
    t_max = (int(lengths[rows].max()) if len(rows) else 0) + extra
    want = padded_by_hand(packed, offsets, lengths, rows, t_max)
    assert torch.equal(torch.ops.fastbci.gather_padded(packed, offsets, lengths, rows, t_max), want)
    out = torch.full((len(rows), t_max, C), 7, dtype=dtype)  # stale values must be overwritten
    assert torch.ops.fastbci.gather_padded.out(packed, offsets, lengths, rows, t_max, out=out) is None
    assert torch.equal(out, want)
    assert gather_padded(packed, offsets, lengths, rows, t_max, out=out) is out
    for impl in ("auto", "fused", "reference"):
        assert torch.equal(gather_padded(packed, offsets, lengths, rows, t_max, impl=impl), want), impl
    if dtype.is_floating_point:
        assert torch.equal(gather_padded_ref(packed, offsets, lengths, rows, t_max), want)


@needs_ext
@pytest.mark.parametrize("rows", [[3, 0, 3, 6], []])
def test_opcheck(rows):
    """The schema, the CPU kernel and the fake kernel agree (torch.library.opcheck: schema,
    autograd registration, fake tensor, AOT dispatch)."""
    packed, offsets, lengths = packed_case()
    rows = torch.tensor(rows, dtype=torch.int64)
    t_max = (int(lengths[rows].max()) if len(rows) else 0) + 2
    torch.library.opcheck(torch.ops.fastbci.gather_padded.default,
                          (packed, offsets, lengths, rows, t_max))
    out = torch.empty(len(rows), t_max, C)
    torch.library.opcheck(torch.ops.fastbci.gather_padded.out,
                          (packed, offsets, lengths, rows, t_max), {"out": out})


@needs_ext
def test_the_op_compiles_without_a_graph_break():
    packed, offsets, lengths = packed_case()
    rows = torch.tensor([3, 0, 6])
    t_max = int(lengths[rows].max())
    fn = torch.compile(lambda p, o, n, r: torch.ops.fastbci.gather_padded(p, o, n, r, t_max) * 2,
                       fullgraph=True, backend="aot_eager")
    assert torch.equal(fn(packed, offsets, lengths, rows),
                       padded_by_hand(packed, offsets, lengths, rows, t_max) * 2)


@needs_ext
def test_store_gather_native_equals_reference(tmp_path):
    from fastbci.config import load_config
    from fastbci.data import TrialStore
    from fastbci.synth import write_release
    summ = write_release(tmp_path, sessions=2, n_train=5, n_val=0, n_test=0, neural_dim=C,
                         seed=3, train_only=[])
    store = TrialStore.from_config(load_config(summ["config"]), "train", progress=False)
    rows = np.array([4, 0, 7, 7, 2])
    t_max = int(store.lengths_np[rows].max())
    native = store.gather(rows, pad_to=t_max + 2)
    buf = torch.full((len(rows) * t_max * C + 5,), 5.0)
    native_out = store.gather(rows, out=buf)
    r = torch.from_numpy(rows)
    reference = gather_padded_ref(store.features, store.offsets, store.lengths, r, t_max + 2)
    assert torch.equal(native, reference)
    assert torch.equal(native_out, reference[:, :t_max]) and native_out.data_ptr() == buf.data_ptr()


@needs_ext
def test_gather_errors():
    packed, offsets, lengths = packed_case()
    op = torch.ops.fastbci.gather_padded.out
    rows = torch.tensor([0, 1])
    t_max = int(lengths[:2].max())
    out = torch.empty(2, t_max, C)
    with pytest.raises(RuntimeError, match=r"rows\[1\] = 9 is not a trial"):
        op(packed, offsets, lengths, torch.tensor([0, 9]), t_max, out=out)
    long = int(lengths.argmax())
    with pytest.raises(RuntimeError, match="more than t_max"):
        op(packed, offsets, lengths, torch.tensor([long]), 0, out=torch.empty(1, 0, C))
    with pytest.raises(ValueError, match="more than t_max"):
        gather_padded_ref(packed, offsets, lengths, torch.tensor([long]), 0)
    with pytest.raises(RuntimeError, match="out must be a contiguous"):
        op(packed, offsets, lengths, rows, t_max, out=torch.empty(2, t_max + 1, C))
    with pytest.raises(RuntimeError, match="out must be a contiguous"):
        op(packed, offsets, lengths, rows, t_max, out=out.double())
    with pytest.raises(RuntimeError, match="rows must be a contiguous 1-D int64"):
        op(packed, offsets, lengths, rows.int(), t_max, out=out)
    with pytest.raises(RuntimeError, match="lies outside"):  # a packed tensor of one row
        op(packed[:1], offsets, lengths, torch.tensor([long]), int(lengths[long]),
           out=torch.empty(1, int(lengths[long]), C))
    with pytest.raises(ValueError, match="offsets must have"):
        gather_padded(packed, offsets[:-1], lengths, rows, t_max)
    with pytest.raises(ValueError, match="t_max must be an integer"):
        gather_padded(packed, offsets, lengths, rows, -1)
