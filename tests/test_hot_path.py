"""No host synchronisation on the trainer's hot path (the fused training step and validation).

A host read of a device tensor (``.item()``, ``bool()``, ``int()``, ``.tolist()``, ``.cpu()``,
...) stalls the host until the device has caught up. The recipe needs one per training step:
the non-finite check of loss and gradient norm (the official trainer stops on a non-finite
gradient). These tests check that fastbci's own code makes no other.

Structural proxy on a CPU machine: the fused step runs for real (Triton interpreter, C++ CPU day
projection) while every Python-level host read of a tensor made from a fastbci source file is
recorded with its call site (reads inside torch or Triton are theirs, not ours). The CPU run
takes the same branches as a CUDA run, except for checks explicitly guarded by
``device.type == "cpu"`` (listed in ``HOST_ONLY_CHECKS``, and verified to carry that guard). On a
CUDA machine the same counts run on the GPU, with ``torch.cuda.set_sync_debug_mode("warn")``.

Beside it, exactness: the host copies the batch carries (lengths, local day indices) equal their
device counterparts, the CTC loss with host lengths equals the loss with device lengths, the
sync-free decoding and edit distance equal the checked ones, the model with given local day
indices equals the model computing them, validation (with ``collect``) equals an independent
recomputation, and the taps cache returns the official taps.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fastbci
from helpers import run_config
from fastbci import metrics
from fastbci.reference import patch_input_lengths
from fastbci.training import Trainer
from fastbci.training.report import StepTimer
from fastbci.validation import ctc_per_trial, forward_logits, run_validation
from fastbci.reference import smoothing_taps

PKG_DIRS = tuple(str(Path(m.__file__).resolve().parent) + os.sep
                 for m in (fastbci, importlib.import_module("fastbci.kernels.launch")))

def _day_projection_check_args(device: str) -> tuple:
    """Arguments of ``fastbci.ops.day_projection._check_inputs`` with every tensor on ``device``."""
    return (torch.zeros(2, 3, 4, device=device), torch.tensor([0, 1], device=device),
            torch.zeros(2, 4, 4, device=device), torch.zeros(2, 4, device=device), 0.0, 0, 0)


# (file name, function) -> its arguments on a device: code whose host reads happen for CPU
# tensors only, so that its reads (and those of the functions it calls) are never a
# synchronisation (test_host_only_checks_read_no_device_tensor proves it):
# * the day projection's argument check reads day_idx only for CPU tensors (skipped on CUDA).
# (The random cut is drawn with Python ints, no tensor at all: it needs no entry.)
HOST_ONLY_CHECKS = {
    ("day_projection.py", "_check_inputs"): _day_projection_check_args,
}

READS = ("item", "tolist", "cpu", "__bool__", "__int__", "__float__", "__index__", "__format__",
         "__array__")

MODEL = ["model.n_units=16", "model.n_layers=2", "model.rnn_dropout=0.4"]


# ---------------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy two-core machine OpenMP spin-waits can make tiny steps
    very slow; results are unchanged."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def release(synth_release):
    return synth_release(seed=0)


def hot_device() -> torch.device:
    """CUDA when present, else the CPU with the fused path interpreted (skip otherwise)."""
    if torch.cuda.is_available():
        dev = torch.device("cuda")
    else:
        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            pytest.skip("the fused path on CPU needs the Triton interpreter (tests/conftest.py)")
        dev = torch.device("cpu")
    if not importlib.import_module("fastbci.ops.day_projection").fused_available():
        pytest.fail("fastbci._C is not built: the fused day projection cannot run "
                    "(pip install -e . --no-build-isolation)")
    return dev


def make_cfg(release, out, *over, device="cpu", impl="fused"):
    base = [*MODEL, "dataset.batch_size=5", "dataset.days_per_batch=2", "num_training_batches=6",
            "batches_per_train_log=1", "batches_per_val_step=100", "lr_warmup_steps=2",
            "lr_warmup_steps_day=2", "lr_decay_steps=6", "lr_decay_steps_day=6",
            "use_amp=false", "fastbci.rng=philox", f"fastbci.impl={impl}",
            f"fastbci.device={torch.device(device).type}", "fastbci.progress=false",
            "fastbci.plot=false", "fastbci.store_device=auto"]
    return run_config(release, out, base, *over)


def trainer(release, tmp_path, *over, device="cpu", impl="fused") -> Trainer:
    cfg = make_cfg(release, tmp_path / "run", *over, device=device, impl=impl)
    return Trainer(cfg, console=False).setup()


@dataclasses.dataclass
class Read:
    method: str
    file: str
    line: int
    function: str
    callers: tuple  # (file name, function) of every fastbci frame from the read outwards

    def __str__(self):
        chain = " <- ".join(f"{f}:{fn}" for f, fn in self.callers[1:4])
        return f"{self.method} at {self.file}:{self.line} in {self.function}() <- {chain}"


@contextlib.contextmanager
def count_host_reads(monkeypatch):
    """Record every host read of a tensor whose caller is a fastbci source file."""
    reads: list[Read] = []
    with monkeypatch.context() as m:
        for name in READS:
            orig = getattr(torch.Tensor, name)

            def hook(self, *a, __orig=orig, __name=name, **k):
                f = sys._getframe(1)
                path = os.path.abspath(f.f_code.co_filename)
                if path.startswith(PKG_DIRS):
                    callers, g = [], f
                    while g is not None:
                        p = os.path.abspath(g.f_code.co_filename)
                        if p.startswith(PKG_DIRS):
                            callers.append((Path(p).name, g.f_code.co_name))
                        g = g.f_back
                    reads.append(Read(__name, path, f.f_lineno, f.f_code.co_name,
                                      tuple(callers)))
                return __orig(self, *a, **k)

            m.setattr(torch.Tensor, name, hook)
        yield reads


def unexpected(reads: list[Read]) -> list[Read]:
    """The reads not made inside one of the host-only functions."""
    return [r for r in reads if not any(c in HOST_ONLY_CHECKS for c in r.callers)]


def sync_debug(device: torch.device):
    """CUDA: report every synchronising call as a warning in the test output (not asserted:
    torch's own CUDA ops, e.g. ctc_loss, may synchronise internally, beyond fastbci's control)."""
    if device.type != "cuda":
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def ctx():
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return ctx()


def test_host_only_checks_read_no_device_tensor(monkeypatch):
    """The allowed host reads are really host-only: with its tensors on a device that cannot be
    read at all ('meta': any read raises), each check reads nothing and passes; with CPU tensors
    it does read (so the count below would see a read that lost its CPU guard)."""
    for (file, fn), args_on in HOST_ONLY_CHECKS.items():
        stem = Path(file).stem
        mod = importlib.import_module(("fastbci." if stem == "philox" else "fastbci.ops.") + stem)
        check = getattr(mod, fn)
        with count_host_reads(monkeypatch) as reads:
            check(*args_on("meta"))
        assert not reads, f"{file}:{fn} read a device tensor: {[str(r) for r in reads]}"
        with count_host_reads(monkeypatch) as reads:
            check(*args_on("cpu"))
        assert reads, f"{file}:{fn} made no host read on the CPU: is it still in use?"


# ---------------------------------------------------------------------------------------------
# the training step and validation
# ---------------------------------------------------------------------------------------------
def test_fused_train_step_reads_the_host_once(release, tmp_path, monkeypatch):
    """Each fused ``Trainer.train_step`` reads the host exactly once: the non-finite check."""
    dev = hot_device()
    tr = trainer(release, tmp_path, device=dev)
    assert tr.builder.fused and tr.train_store.features.device.type == dev.type
    tr.train_step(0)  # warm caches (taps, kernels) outside the count
    ctc_calls = []
    ctc = torch.nn.functional.ctc_loss

    def ctc_spy(log_probs, targets, input_lengths, target_lengths, *a, **k):
        ctc_calls.append((input_lengths, target_lengths))
        return ctc(log_probs, targets, input_lengths, target_lengths, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "ctc_loss", ctc_spy)
    for k in (1, 2):
        ctc_calls.clear()
        with count_host_reads(monkeypatch) as reads, sync_debug(dev):
            out = tr.train_step(k)
        assert out.finite
        # ctc_loss reads its lengths on the host: it must get the batch's host copies
        b = out.batch
        assert len(ctc_calls) == 1 and ctc_calls[0][0] is b.input_lens_host \
            and ctc_calls[0][1] is b.label_lens_host, "ctc_loss did not get the host lengths"
        assert b.input_lens_host.device.type == "cpu" and b.label_lens_host.device.type == "cpu"
        bad = unexpected(reads)
        where = "\n  ".join(str(r) for r in bad)
        assert len(bad) == 1, f"step {k}: expected one host read (the non-finite check), got " \
                              f"{len(bad)}:\n  {where}"
        assert bad[0].method == "__int__" and bad[0].function == "__call__" \
            and Path(bad[0].file).name == "step.py", f"step {k}: the one read is {bad[0]}"


def test_validation_reads_the_host_a_fixed_number_of_times(release, tmp_path, monkeypatch):
    """Validation reads the host at the end only: the same count for one batch as for all."""
    dev = hot_device()
    tr = trainer(release, tmp_path, device=dev)
    assert len(tr.val_plan) >= 2, "the test needs several validation batches"
    counts = {}
    for n in (1, len(tr.val_plan)):
        for collect in (False, True):
            with count_host_reads(monkeypatch) as reads:
                run_validation(tr.model, tr.val_store, tr.val_plan[:n], tr.builder,
                               collect=collect)
            bad = unexpected(reads)
            assert all(r.function in ("run_validation", "_collected_to_host") for r in bad), \
                "host reads outside the final gathering:\n  " + "\n  ".join(map(str, bad))
            counts[n, collect] = len(bad)
    assert counts[1, False] == counts[len(tr.val_plan), False] <= 2, counts
    assert counts[1, True] == counts[len(tr.val_plan), True] <= 4, counts


def test_step_timer_measures_and_checks_use():
    timer = StepTimer(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="without start"):
        timer.stop()
    timer.start()
    sum(range(20000))
    dt = timer.stop()
    assert 0 < dt < 5, dt
    with pytest.raises(RuntimeError, match="without start"):
        timer.stop()


# ---------------------------------------------------------------------------------------------
# exactness of the host copies and of the sync-free paths
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("mode,k", [("train", 0), ("train", 3), ("val", 0)])
def test_batch_host_copies_match_the_device(release, tmp_path, impl, mode, k):
    dev = hot_device() if impl == "fused" else torch.device("cpu")
    tr = trainer(release, tmp_path, device=dev, impl=impl)
    store = tr.train_store if mode == "train" else tr.val_store
    rows = np.asarray(tr.plan[k] if mode == "train" else tr.val_plan[k])
    b = tr.builder.batch(store, rows, mode=mode, step=k)
    m = tr.cfg["model"]
    ctx = f"{impl} {mode} batch {k} rows {rows.tolist()}"
    assert b.n_time_host.device.type == "cpu" and b.input_lens_host.device.type == "cpu"
    assert torch.equal(b.n_time_host, b.n_time_steps.cpu()), \
        f"{ctx}: n_time_host {b.n_time_host.tolist()} vs device {b.n_time_steps.tolist()}"
    want = patch_input_lengths(b.n_time_steps, int(m["patch_size"]), int(m["patch_stride"])).cpu()
    assert torch.equal(b.input_lens_host, want), \
        f"{ctx}: input_lens_host {b.input_lens_host.tolist()} vs {want.tolist()}"
    assert torch.equal(b.label_lens_host, b.label_lens.cpu()), ctx
    assert torch.equal(b.label_lens.cpu(), torch.from_numpy(store.seq_len_np[rows].astype(np.int64)))
    want_labels = torch.from_numpy(store.seq_class_ids_np[rows, :b.labels.shape[1]].astype(np.int64))
    assert torch.equal(b.labels.cpu(), want_labels), f"{ctx}: labels differ"
    assert b.labels.shape[1] == max(int(store.seq_len_np[rows].max()), 1)
    assert torch.equal(b.day_idx.cpu(), torch.from_numpy(store.day_np[rows])), ctx
    present = torch.tensor(b.days_present)
    assert torch.equal(present[b.local_day_idx.cpu()], b.day_idx.cpu()), \
        f"{ctx}: local_day_idx {b.local_day_idx.tolist()} does not map onto {b.days_present}"
    assert b.max_input_len == int(want.max()) and b.max_label_len == int(store.seq_len_np[rows].max())


def test_ctc_with_host_lengths_equals_device_lengths(release, tmp_path):
    tr = trainer(release, tmp_path, impl="reference")
    for k in (0, 1):
        b = tr.builder.batch(tr.train_store, np.asarray(tr.plan[k]), mode="train", step=k)
        logits, lens = forward_logits(tr.model.eval(), b, seed=1, step=k)
        got = ctc_per_trial(logits, lens, b)
        plain = dataclasses.replace(b, input_lens_host=None, label_lens_host=None)
        want = ctc_per_trial(logits, lens, plain)
        assert torch.equal(got, want), f"batch {k}: {got.tolist()} vs {want.tolist()}"


def test_model_local_day_idx_equals_the_lookup_and_is_checked(release, tmp_path):
    tr = trainer(release, tmp_path, impl="reference")
    model = tr.model.eval()
    b = tr.builder.batch(tr.train_store, np.asarray(tr.plan[2]), mode="val")
    with torch.no_grad():
        given = model(b.features, b.day_idx, days_present=b.days_present,
                      local_day_idx=b.local_day_idx)
        looked_up = model(b.features, b.day_idx, days_present=b.days_present)
        plain = model(b.features, b.day_idx)
    assert torch.equal(given, looked_up) and torch.equal(given, plain)
    if len(b.days_present) > 1:
        wrong = (b.local_day_idx + 1) % len(b.days_present)
        with pytest.raises(ValueError, match="local_day_idx .* does not map day_idx"):
            model(b.features, b.day_idx, days_present=b.days_present, local_day_idx=wrong)
    with pytest.raises(ValueError, match="local_day_idx must be a"):
        model(b.features, b.day_idx, days_present=b.days_present, local_day_idx=b.local_day_idx[:1])
    with pytest.raises(ValueError, match="needs days_present"):
        model(b.features, b.day_idx, local_day_idx=b.local_day_idx)
    with pytest.raises(TypeError, match="integer tensor"):
        model(b.features, b.day_idx, days_present=b.days_present,
              local_day_idx=b.local_day_idx.float())


def test_validation_equals_an_independent_recomputation(release, tmp_path):
    """``run_validation`` (sync-free decoding, on-device sums, gathered outputs) against a
    per-batch recomputation with the checked metrics."""
    tr = trainer(release, tmp_path, impl="reference")
    res = run_validation(tr.model, tr.val_store, tr.val_plan, tr.builder, collect=True)
    model = tr.model.eval()
    losses, edits, phon, rows_all, logits_all, tokens_all = [], {}, {}, [], [], []
    with torch.no_grad():
        for rows in tr.val_plan:
            b = tr.builder.batch(tr.val_store, rows, mode="val")
            logits, lens = forward_logits(model, b, seed=1, step=0)
            losses.append(float(ctc_per_trial(logits, lens, b).mean()))
            tok, n_tok = metrics.greedy_decode(logits, lens.long())
            ed = metrics.edit_distance(tok, n_tok, b.labels, b.label_lens)
            d = int(tr.val_store.day_np[rows[0]])
            edits[d] = edits.get(d, 0) + int(ed.sum())
            phon[d] = phon.get(d, 0) + int(b.label_lens.sum())
            for i, r in enumerate(rows):
                rows_all.append(int(r))
                logits_all.append(logits[i, :int(lens[i])].float().numpy())
                tokens_all.append(tok[i, :int(n_tok[i])].numpy())
    assert res.edits_by_day == edits and res.phonemes_by_day == phon
    assert res.per == sum(edits.values()) / sum(phon.values())
    assert res.loss == pytest.approx(float(np.mean(np.float32(losses), dtype=np.float32)),
                                     rel=1e-6)
    assert res.trials.rows == rows_all
    for i, (g, w) in enumerate(zip(res.trials.logits, logits_all)):
        assert g.shape == w.shape and np.array_equal(g, w), f"trial {i}: logits differ"
    for i, (g, w) in enumerate(zip(res.trials.tokens, tokens_all)):
        assert np.array_equal(g, w), f"trial {i}: tokens {g} vs {w}"


@pytest.mark.parametrize("B,T,K,extra", [(1, 1, 3, 0), (3, 17, 5, 0), (4, 9, 41, 3), (7, 40, 3, 5)])
def test_greedy_decode_with_width_equals_default(B, T, K, extra):
    g = torch.Generator().manual_seed(B * 100 + T)
    ids = torch.randint(0, min(K, 4), (B, T), generator=g)
    logits = torch.randn(B, T, K, generator=g) + 5 * torch.nn.functional.one_hot(ids, K).float()
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    tok, n = metrics.greedy_decode(logits, lengths)
    width = int(lengths.max()) + extra
    tok_w, n_w = metrics.greedy_decode(logits, lengths, width=width, check=False)
    assert torch.equal(n, n_w) and tok_w.shape == (B, width)
    L = tok.shape[1]
    assert torch.equal(tok_w[:, :L], tok), f"{tok_w} vs {tok}"
    assert (tok_w[:, L:] == -1).all()
    if int(n.max()) > 0:
        with pytest.raises(ValueError, match="width=0 is shorter"):
            metrics.greedy_decode(logits, lengths, width=0)
    with pytest.raises(ValueError, match="width must be"):
        metrics.greedy_decode(logits, lengths, width=-1)


@pytest.mark.parametrize("B,Lh,Lr,slack", [(1, 1, 1, 0), (3, 7, 2, 1), (5, 2, 9, 3), (6, 13, 11, 0)])
def test_edit_distance_with_bounds_equals_default(B, Lh, Lr, slack):
    g = torch.Generator().manual_seed(B * 31 + Lh)
    hyp = torch.randint(1, 4, (B, Lh), generator=g)
    ref = torch.randint(1, 4, (B, Lr), generator=g)
    hl = torch.randint(0, Lh + 1, (B,), generator=g)
    rl = torch.randint(0, Lr + 1, (B,), generator=g)
    want = metrics.edit_distance(hyp, hl, ref, rl)
    got = metrics.edit_distance(hyp, hl, ref, rl, max_hyp_len=int(hl.max()) + slack,
                                max_ref_len=int(rl.max()) + slack, check=False)
    assert torch.equal(got, want), f"{got.tolist()} vs {want.tolist()}"
    if int(rl.max()) > 0:
        with pytest.raises(ValueError, match="above max_ref_len"):
            metrics.edit_distance(hyp, hl, ref, rl, max_ref_len=int(rl.max()) - 1)
    with pytest.raises(ValueError, match="max_hyp_len must be"):
        metrics.edit_distance(hyp, hl, ref, rl, max_hyp_len=-2)


def test_cached_smoothing_taps():
    from fastbci.config import official
    from fastbci.ops import Augmentation
    from fastbci.ops.augment import cached_smoothing_taps
    tf = {"smooth_kernel_std": 2, "smooth_kernel_size": 100}
    a = cached_smoothing_taps(Augmentation(smooth_kernel_std=2), "cpu")
    assert a is cached_smoothing_taps(Augmentation(smooth_kernel_std=2.0), torch.device("cpu")), \
        "not cached"
    assert torch.equal(a, smoothing_taps(tf)) and a.dtype == torch.float32
    b = cached_smoothing_taps(Augmentation(smooth_kernel_std=3))
    assert b is not a and torch.equal(b, smoothing_taps({"smooth_kernel_std": 3,
                                                         "smooth_kernel_size": 100}))
    # True == 1 hashes alike, but a bool std is an error: refused where the values are made
    cached_smoothing_taps(Augmentation(smooth_kernel_std=1))
    with pytest.raises(ValueError, match="smooth_kernel_std"):
        Augmentation(smooth_kernel_std=True)
    without_size = {k: v for k, v in official()["dataset"]["data_transforms"].items()
                    if k != "smooth_kernel_size"}
    with pytest.raises(KeyError, match="smooth_kernel_size"):
        Augmentation.from_transforms(without_size)
