"""End-to-end equivalence of the training step: ``fastbci.impl=fused`` vs ``reference``.

Both paths draw every random number of the step from the same Philox streams
(``fastbci.rng=philox``: augmentation noise, offset and cut keyed by ``dataset.seed`` and the
batch index, day-layer dropout keyed the same way) and the GRU's inter-layer dropout from torch's
generator, seeded identically. So the two paths compute the same function and may differ only by
float32 rounding (summation order of the day GEMM, the smoothing and the patch fold).

On a CPU the fused path is the real fused code: the Triton kernels (augment_smooth_gather,
patchify) run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1) and the day
projection is the C++ CPU op of ``fastbci._C``. Spies check that those kernels really ran, so the
test can never compare the reference with itself. On a GPU the same tests also run on CUDA
(``device`` fixture), at bf16-level tolerances (see ``CUDA_RTOL``).

Cases:

* one step, directly through the public pieces (``BatchBuilder``, ``GRUDecoder``,
  ``forward_logits``, ``ctc_per_trial``), for odd batch layouts: the augmented batch; the model
  on the same batch (logits, loss and the gradient of every parameter within 1e-5, the days
  absent from the batch without a gradient in both); the whole step (loss within 1e-5,
  gradients by the float64 rule explained in the test);
* 50 optimisation steps through ``Trainer.train_step``: the two loss curves agree (tolerance
  explained at ``CURVE_RTOL``) and so do the parameters after the last step.

Cost on a two-core CPU: about 20 s for the module (the 50-step case ~12 s, on trials cut to
60-100 steps because the Triton interpreter costs roughly a constant per program).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import os

import numpy as np
import pytest
import torch

from fastbci.data.batch import Batch, BatchBuilder
from fastbci.training import Trainer, seed_everything
from fastbci.validation import ctc_per_trial, forward_logits
from fastbci.config import load_config
from fastbci.data import TrialStore, read_session_file, train_batch_plan, write_session_file
from helpers import run_config, assert_close, augment_tolerance

# float32 contract of docs/internals.md: fused vs reference within 1e-5 (allclose form:
# |a - b| <= ATOL + RTOL * |b|; the relative part matters for the CTC loss, ~100-300 per trial
# at these sizes, where one float32 ulp is already ~1.5e-5).
ATOL = 1e-5
RTOL = 1e-5

# After k optimiser steps the two runs hold parameters that differ by the accumulated rounding of
# k steps. AdamW normalises each update by sqrt(v) + eps (eps = 0.1), so a rounding difference in
# a gradient moves the update by about lr * delta_g / (sqrt(v) + eps): it is damped, not
# amplified, but it does add up over the steps and the loss is a sum over ~100 frames of
# log-probabilities of the perturbed weights. Measured on this CPU: at most 1.2e-7 relative over
# the 50 steps of the test (33 steps bit-identical; parameters within 2.4e-7 after the last), and
# 2e-6 on the uncut small preset. 1e-4 leaves a wide margin for other BLAS summation orders
# while still catching any real semantic difference (a wrong noise element,
# a wrong dropout mask, a missing window in the fold or a wrong day's weight all change the loss
# by 1e-3 relative or much more within the first steps).
CURVE_RTOL = 1e-4
CURVE_STEPS = 50
PARAM_ATOL = 1e-4  # parameters after 50 steps (initial scale ~0.1-1, lr 0.005)

# On CUDA the fused day projection multiplies on bf16 tensor cores even for float32 x (by design,
# fastbci/ops/day_projection.py), and the trainer enables TF32 for float32 matmuls (as official),
# so there the paths agree at bf16 level only: 8-bit mantissas (2**-9 relative per rounding),
# float32 accumulation, amplified ~20x by the GRU + CTC backward. These bounds are estimates from
# that arithmetic (no GPU was available when they were written); the CPU bounds are the contract.
CUDA_RTOL = 2e-2        # logits, losses, loss curve (relative)
CUDA_GRAD_REL_L2 = 5e-2  # gradients and parameters after 50 steps (relative L2 per tensor)


def step_tolerance(device) -> dict:
    """atol/rtol of the logits and losses of a step, fused vs reference, on ``device``: the
    float32 contract on the CPU, bf16 level (CUDA_RTOL) on CUDA. Every such assert takes it."""
    if torch.device(device).type == "cuda":
        return dict(atol=CUDA_RTOL, rtol=CUDA_RTOL)
    return dict(atol=ATOL, rtol=RTOL)

# the tiny model of these tests (official architecture, small sizes)
MODEL = ["model.n_units=32", "model.n_layers=2", "model.rnn_dropout=0.4"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run this module's steps with one intra-op thread: on a busy two-core CI machine two
    OpenMP threads can make a tiny GRU step 100x slower (spin-waiting); results are unchanged."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_release(synth_release):
    """The synthetic small preset: 3 sessions (the last train-only), 6 train trials each,
    neural_dim 32, T ~ 250-450 (seed 0)."""
    return synth_release(seed=0)


@pytest.fixture(scope="module")
def short_release(small_release, tmp_path_factory):
    """The small preset with every train trial cut to 60-100 time steps (varying lengths, so the
    padding matters) and its phonemes to the first 5: the Triton interpreter costs about a
    constant per program, so short trials keep 50 interpreted steps within the test budget.
    With random_cut < 3 and patches of 14/4, a 60-step trial gives >= 12 output frames, enough
    for 5 labels (at most 9 frames needed with repeats), so no CTC loss is infinite."""
    d = tmp_path_factory.mktemp("fused_step_short")
    cfg = load_config(small_release / "synth_config.yaml")
    for day, session in enumerate(cfg["dataset"]["sessions"]):
        src = small_release / session / "data_train.hdf5"
        trials = read_session_file(src, "train")
        for i, tr in enumerate(trials):
            keep_t = 60 + (7 * i + 13 * day) % 41
            ids = np.asarray(tr.seq_class_ids).ravel()
            ids = ids[ids != 0][:5]
            tr.input_features = np.ascontiguousarray(tr.input_features[:keep_t])
            tr.n_time_steps = keep_t
            tr.seq_class_ids = ids
            tr.seq_len = int(ids.size)
        write_session_file(d / session / "data_train.hdf5", trials, "train")
    text = (small_release / "synth_config.yaml").read_text()
    (d / "synth_config.yaml").write_text(text.replace(str(small_release.resolve()), str(d.resolve())))
    return d


def make_cfg(release, out, *over, device="cpu"):
    """Tiny model on a synthetic release on ``device``, float32 throughout (no autocast)."""
    base = [*MODEL, "dataset.batch_size=4", "dataset.days_per_batch=2", "num_training_batches=60",
            "lr_warmup_steps=5", "lr_warmup_steps_day=5", "lr_decay_steps=60",
            "lr_decay_steps_day=60", "use_amp=false", "fastbci.rng=philox",
            f"fastbci.device={torch.device(device).type}", "fastbci.progress=false",
            "fastbci.plot=false", "fastbci.store_device=auto"]
    return run_config(release, out, base, *over)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


class FusedSpy:
    """Counts the fused kernels that ran (Triton launchers and the fused day-projection op)."""

    def __init__(self, monkeypatch):
        # by module path: fastbci.ops re-exports functions with the submodules' names
        k_aug = importlib.import_module("fastbci.kernels.augment")
        k_patch = importlib.import_module("fastbci.kernels.patchify")
        dp = importlib.import_module("fastbci.ops.day_projection")
        self.calls = {"augment_kernel": 0, "patchify_forward": 0, "patchify_backward": 0,
                      "day_projection_fused": 0}
        self._wrap(monkeypatch, k_aug, "augment_smooth_launch", "augment_kernel")
        self._wrap(monkeypatch, k_patch, "patchify_forward", "patchify_forward")
        self._wrap(monkeypatch, k_patch, "patchify_backward", "patchify_backward")
        original = dp.day_projection

        def day_projection(*args, impl="auto", **kwargs):
            if impl == "fused":
                self.calls["day_projection_fused"] += 1
            return original(*args, impl=impl, **kwargs)

        monkeypatch.setattr(dp, "day_projection", day_projection)

    def _wrap(self, monkeypatch, module, name, key):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            self.calls[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    def reset(self):
        for k in self.calls:
            self.calls[k] = 0

    def assert_all_ran(self, where: str):
        missing = [k for k, v in self.calls.items() if v == 0]
        assert not missing, (f"{where}: the fused path did not run {missing} (calls {self.calls}): "
                             "the comparison would be reference against reference")

    def assert_none_ran(self, where: str):
        ran = {k: v for k, v in self.calls.items() if v}
        assert not ran, f"{where}: the reference path ran fused kernels {ran}"


def _require_fused(device: torch.device):
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        pytest.skip("the fused path on CPU tensors needs the Triton interpreter, which "
                    "tests/conftest.py turns on only on machines without CUDA")
    if not importlib.import_module("fastbci.ops.day_projection").fused_available():
        pytest.fail("fastbci._C is not built: the fused day projection cannot run "
                    "(pip install -e . --no-build-isolation)")


def _grads(model) -> dict[str, torch.Tensor | None]:
    return {n: (None if p.grad is None else p.grad.detach().clone())
            for n, p in model.named_parameters()}


def build_model(cfg, impl: str, dtype=torch.float32):
    """The model exactly as the trainer builds it (seed, then construction), in ``dtype``."""
    from fastbci.model import GRUDecoder
    seed_everything(int(cfg["seed"]))
    model = GRUDecoder.from_config(cfg, impl=impl, rng="philox")
    return model.to(device=torch.device(cfg["fastbci"]["device"]), dtype=dtype).train()


def make_batch(cfg, impl: str, k: int) -> Batch:
    """Training batch ``k`` of the official plan through ``BatchBuilder`` (augmented + smoothed)."""
    dev = torch.device(cfg["fastbci"]["device"])
    store = TrialStore.from_config(cfg, "train", device=dev, progress=False)
    ds = cfg["dataset"]
    plan = train_batch_plan(store.trials_by_day, k + 1, ds["batch_size"], ds["days_per_batch"],
                            ds["seed"])
    builder = BatchBuilder.from_config(dict(cfg, fastbci=dict(cfg["fastbci"], rng="philox")), dev,
                                       impl=impl)
    return builder.batch(store, np.asarray(plan[k]), mode="train", step=k)


def step_on(model, batch: Batch, cfg, k: int) -> dict:
    """Forward + CTC + backward of one batch (the trainer's step before clipping)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)  # the GRU's inter-layer dropout draws from torch's generator
    logits, lens = forward_logits(model, batch, seed=int(cfg["dataset"]["seed"]), step=k)
    per_trial = ctc_per_trial(logits, lens, batch)
    loss = per_trial.mean()
    loss.backward()
    return {"logits": logits.detach(), "lens": lens, "per_trial": per_trial.detach(),
            "loss": loss.detach(), "grads": _grads(model)}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _check_same_batch(rb: T.Batch, fb: T.Batch, device, where: str) -> None:
    """The fused data path's batch is the reference's: rows, days, lengths, labels, features."""
    assert np.array_equal(rb.rows, fb.rows), f"{where}: different trial rows"
    assert rb.days_present == fb.days_present, f"{where}: different days present"
    assert torch.equal(rb.n_time_steps.cpu(), fb.n_time_steps.cpu()), \
        f"{where}: n_time_steps after the cut {fb.n_time_steps.tolist()} vs {rb.n_time_steps.tolist()}"
    assert torch.equal(rb.labels.cpu(), fb.labels.cpu()) and \
        torch.equal(rb.label_lens.cpu(), fb.label_lens.cpu()), f"{where}: labels differ"
    assert fb.features.dtype == torch.float32, f"{where}: use_amp=false must give float32 features"
    assert_close(fb.features, rb.features, **augment_tolerance(device),
                 what=f"{where}: augmented + smoothed batch")


def _check_same_grads(rg: dict, sg: dict, rb: T.Batch, cfg, cuda: bool, where: str) -> None:
    """The same parameters get a gradient (not the days absent from the batch), and the
    gradients agree: within 1e-5 on the CPU, CUDA_GRAD_REL_L2 (relative L2) on CUDA."""
    assert rg.keys() == sg.keys()
    none_ref = sorted(n for n, g in rg.items() if g is None)
    none_fused = sorted(n for n, g in sg.items() if g is None)
    assert none_ref == none_fused, (f"{where}: parameters without a gradient differ: reference "
                                    f"{none_ref}, fused {none_fused}")
    present = set(rb.days_present)
    n_days = len(cfg["dataset"]["sessions"])
    expect_none = sorted(f"day_{kind}.{d}" for d in range(n_days) if d not in present
                         for kind in ("weights", "biases"))
    assert none_ref == expect_none, (f"{where}: days absent from the batch must get no gradient "
                                     f"(official per-day parameters): {none_ref} vs {expect_none}")
    for name, g in rg.items():
        if g is not None:
            assert float(g.abs().max()) > 0, f"{where}: the reference gradient of {name} is all zero"
            if cuda:
                err = rel_l2(sg[name], g)
                assert err <= CUDA_GRAD_REL_L2, (f"{where}, same batch: gradient of {name} is "
                                                 f"{err:.3g} (relative L2) from the reference")
            else:
                assert_close(sg[name], g, atol=ATOL, rtol=RTOL,
                             what=f"{where}, same batch: gradient of {name}")


# ---------------------------------------------------------------------------------------------
# one step
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size,days_per_batch,k", [
    (4, 2, 0),   # the brief's layout: two days of two trials
    (3, 2, 7),   # odd: ceil(3/2) = 2 per day, one trial dropped; a later step (other streams)
    (5, 3, 2),   # every day present, uneven per-day counts
], ids=["B4-days2-step0", "B3-days2-step7", "B5-days3-step2"])
def test_one_step_fused_matches_reference(small_release, tmp_path, monkeypatch, device,
                                          batch_size, days_per_batch, k):
    """Three comparisons, from the data path to the whole step:

    1. the augmented + smoothed batch (Philox noise, offset, cut, Gaussian taps): within 1e-5;
    2. the model on the SAME batch (fused day projection + patchify vs reference): logits, CTC
       loss and the gradient of every parameter within 1e-5 (allclose), and the same parameters
       without a gradient (the days absent from the batch);
    3. the whole step, each path on its own batch: the loss within 1e-5. The gradients then
       carry the ulp-level differences of step 1 (~5e-7) through a GRU and a CTC over ~100
       frames, which amplifies them ~20x (measured: ~1e-5 relative, while 2. agrees to 1.5e-7);
       that is below the float32 reference's own error, so they are held to the rule of
       docs/internals.md for low precision: error vs a float64 run of the reference at most twice the
       error of the float32 reference.
    """
    _require_fused(device)
    cfg = make_cfg(small_release, tmp_path / "run", f"dataset.batch_size={batch_size}",
                   f"dataset.days_per_batch={days_per_batch}", device=device)
    where = f"{device}: B={batch_size} days_per_batch={days_per_batch} step {k}"
    cuda = device.type == "cuda"
    spy = FusedSpy(monkeypatch)
    rb = make_batch(cfg, "reference", k)
    ref_model = build_model(cfg, "reference")
    ref = step_on(ref_model, rb, cfg, k)
    spy.assert_none_ran("impl=reference")

    # 1. the data path
    fb = make_batch(cfg, "fused", k)
    assert spy.calls["augment_kernel"] == 1, f"{where}: the fused data path did not run: {spy.calls}"
    _check_same_batch(rb, fb, device, where)

    # 2. the model on the same batch
    fused_model = build_model(cfg, "fused")
    same = step_on(fused_model, rb, cfg, k)
    spy.assert_all_ran("impl=fused")
    assert torch.equal(ref["lens"].cpu(), same["lens"].cpu()), f"{where}: CTC input lengths"
    tol = step_tolerance(device)
    assert_close(same["logits"], ref["logits"], **tol, what=f"{where}, same batch: logits")
    assert_close(same["per_trial"], ref["per_trial"], **tol,
                 what=f"{where}, same batch: CTC loss per trial")
    assert_close(same["loss"], ref["loss"], **tol, what=f"{where}, same batch: batch loss")
    assert math.isfinite(float(ref["loss"])), f"{where}: the reference loss is not finite"
    rg = ref["grads"]
    _check_same_grads(rg, same["grads"], rb, cfg, cuda, where)

    # 3. the whole step, each path on its own batch
    e2e = step_on(fused_model, fb, cfg, k)
    assert_close(e2e["loss"], ref["loss"], **tol, what=f"{where}, end to end: batch loss")
    assert_close(e2e["per_trial"], ref["per_trial"], **tol,
                 what=f"{where}, end to end: CTC loss per trial")
    if cuda:  # bf16 tensor cores: the float64 rule below is the CPU (float32) contract
        for name, g in rg.items():
            if g is not None:
                err = rel_l2(e2e["grads"][name], g)
                assert err <= CUDA_GRAD_REL_L2, (f"{where}, end to end: gradient of {name} is "
                                                 f"{err:.3g} (relative L2) from the reference")
        return
    # the rule compares each path with a float64 run of the reference on the same inputs: the
    # fused batch (its noise within an ulp of the reference's, checked in 1.) is the input of
    # all three runs, so that the ulp-level input difference, which the GRU and CTC amplify, is
    # not charged to the fused arithmetic
    ref_fb = step_on(ref_model, fb, cfg, k)["grads"]
    oracle = step_on(build_model(cfg, "reference", torch.float64),
                     dataclasses.replace(fb, features=fb.features.double()), cfg, k)
    for name, g64 in oracle["grads"].items():
        if g64 is None:
            assert e2e["grads"][name] is None, f"{where}: {name} got a gradient end to end"
            continue
        err_ref = rel_l2(ref_fb[name], g64)
        err_fused = rel_l2(e2e["grads"][name], g64)
        assert err_fused <= 2 * err_ref + 1e-7, (
            f"{where}, end to end: gradient of {name} is {err_fused:.3g} (relative L2) from the "
            f"float64 reference, more than twice the float32 reference's {err_ref:.3g}; "
            f"fused vs float32 reference: {rel_l2(e2e['grads'][name], ref_fb[name]):.3g}")


# ---------------------------------------------------------------------------------------------
# 50 steps
# ---------------------------------------------------------------------------------------------
def run_curve(cfg, steps: int):
    tr = Trainer(cfg, console=False).setup()
    losses, finite = [], []
    for k in range(steps):
        out = tr.train_step(k)
        finite.append(out.finite)
        losses.append(out.loss)
    curve = torch.stack(losses).double().cpu().numpy()
    params = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    return curve, finite, params


@pytest.mark.slow
def test_fifty_steps_same_loss_curve(short_release, tmp_path, monkeypatch, device):
    _require_fused(device)
    cuda = device.type == "cuda"
    spy = FusedSpy(monkeypatch)
    precision = torch.get_float32_matmul_precision()  # the trainer sets "high" on CUDA
    try:
        ref, ref_ok, ref_params = run_curve(
            make_cfg(short_release, tmp_path / "ref", "fastbci.impl=reference", device=device),
            CURVE_STEPS)
        spy.assert_none_ran("impl=reference, 50 steps")
        fused, fused_ok, fused_params = run_curve(
            make_cfg(short_release, tmp_path / "fused", "fastbci.impl=fused", device=device),
            CURVE_STEPS)
    finally:
        torch.set_float32_matmul_precision(precision)
    spy.assert_all_ran("impl=fused, 50 steps")
    assert spy.calls["augment_kernel"] >= CURVE_STEPS, spy.calls

    assert all(ref_ok) and all(fused_ok), (f"non-finite steps: reference "
                                           f"{[k for k, ok in enumerate(ref_ok) if not ok]}, fused "
                                           f"{[k for k, ok in enumerate(fused_ok) if not ok]}")
    # the comparison means something only if the runs train: the loss must move
    assert ref[-10:].mean() < 0.9 * ref[:5].mean(), f"the reference did not train: {ref}"
    curve_rtol = CUDA_RTOL if cuda else CURVE_RTOL
    if not cuda:  # step 0 (identical weights) is held to the one-step contract
        assert abs(fused[0] - ref[0]) <= ATOL + RTOL * abs(ref[0]), (fused[0], ref[0])
    rel = np.abs(fused - ref) / np.abs(ref)
    worst = int(rel.argmax())
    assert rel.max() <= curve_rtol, (
        f"{device}: loss curves diverge: {int((rel > curve_rtol).sum())} of {CURVE_STEPS} steps "
        f"beyond rtol {curve_rtol}; worst step {worst}: fused {fused[worst]:.7g} vs reference "
        f"{ref[worst]:.7g} (rel {rel[worst]:.3g}); first steps fused {fused[:5]} reference {ref[:5]}")
    for name, p in ref_params.items():
        if cuda:
            err = rel_l2(fused_params[name], p)
            assert err <= CUDA_GRAD_REL_L2, (f"{device}: parameter {name} after {CURVE_STEPS} "
                                             f"steps is {err:.3g} (relative L2) from the reference")
        else:
            assert_close(fused_params[name], p, atol=PARAM_ATOL, rtol=CURVE_RTOL, what=f"parameter {name} after {CURVE_STEPS} steps")


# ---------------------------------------------------------------------------------------------
# the CUDA tolerances reach the asserts (checked on any machine)
# ---------------------------------------------------------------------------------------------
def test_step_tolerance_per_device():
    assert step_tolerance(torch.device("cpu")) == dict(atol=ATOL, rtol=RTOL)
    assert step_tolerance(torch.device("cuda")) == dict(atol=CUDA_RTOL, rtol=CUDA_RTOL)
    assert step_tolerance("cuda:1") == step_tolerance("cuda")


def _cpu_only(node, parents) -> bool:
    """Inside the CPU branch of an ``if cuda:`` / ``if not cuda:`` test."""
    import ast

    for child, parent in zip([node, *parents], parents):
        if not isinstance(parent, ast.If):
            continue
        test = parent.test
        negated = isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)
        name = test.operand if negated else test
        if isinstance(name, ast.Name) and name.id == "cuda":
            in_body = any(child is n for n in parent.body)
            if in_body == negated:
                return True
    return False


def test_device_asserts_take_the_device_tolerance():
    """In this module (its tests also run on CUDA), every assert_close gets its tolerance as
    ``**tol`` (from step_tolerance / augment_tolerance of the device) unless it sits in a
    CPU-only branch:
    a hard-coded float32 tolerance would fail on CUDA (bf16 tensor cores) or, worse, a computed
    CUDA tolerance could again be left unused."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(importlib.import_module(__name__)))
    checked = 0
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef) or fn.name == "test_device_asserts_take_the_device_tolerance":
            continue
        parents: dict = {}
        for p in ast.walk(fn):
            for c in ast.iter_child_nodes(p):
                parents[c] = p

        def chain(n):
            out = []
            while n in parents:
                n = parents[n]
                out.append(n)
            return out

        for call in ast.walk(fn):
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "assert_close":
                checked += 1
                unpacked = any(k.arg is None for k in call.keywords)
                assert unpacked or _cpu_only(call, chain(call)), (
                    f"{fn.name}, line {call.lineno}: assert_close with a fixed tolerance outside a "
                    f"CPU-only branch; pass **step_tolerance(device) (or augment_tolerance)")
    assert checked >= 8, f"only {checked} assert_close calls found: has the test changed?"
