"""Benchmarks of the whole training step and of the validation pass (fastbci.train).

Cases (one ``fastbci.training.Trainer`` each, built on the same synthetic release):

* ``fused``: ``fastbci.impl=fused``, ``rng=philox``: the TrialStore on the device, the Triton
  augment_smooth (gather straight from the store), the C++/CUDA day projection, the Triton
  patchify, then cuDNN GRU -> Linear -> CTC, clip, fused AdamW, schedule;
* ``reference``: ``fastbci.impl=reference``, ``rng=philox``: the same step with the pure-PyTorch
  ops (same random streams, so the same numbers up to rounding);
* ``official``: ``fastbci.impl=reference``, ``rng=torch``: the official trainer's arithmetic and
  draw order (torch.randn noise, numpy cut, conv1d smoothing, a matrix per trial for the day
  layer, unfold patching) fed from the same device-resident store: the official cost minus its
  HDF5 loader (bench/test_bench_loader.py times that part).

Groups: ``train_step`` (one optimisation step, ``Trainer.train_step``) and ``validation`` (one
``run_validation`` pass over the validation split). extra_info of a ``train_step`` case:

* ``step_s`` (median), ``data_path_s`` (BatchBuilder.batch: gather + augment + smooth),
  ``pre_gru_forward_s`` (data path + day projection + patchify forward),
  ``pre_gru_fwd_bwd_s`` (that plus their backward: the day-layer dW/db and the patch fold),
  derived ``day_patch_forward_s``, ``day_patch_backward_s``, ``pre_gru_share`` (fraction of
  the step spent before the GRU, forward and backward) and ``gru_and_rest_s``;
* ``projected_120k_batches_h``: ``step_s`` x 120,000 in hours (validations excluded);
* GPU only: ``peak_memory_bytes`` (above the memory held before the step) and
  ``host_syncs_per_step`` (synchronising CUDA calls flagged by torch's sync debug mode in one
  step; the fused step's target is 1, the non-finite check);
* fused only: ``speedup_vs_reference`` and ``speedup_vs_official`` (ratio of step medians,
  all measured in this test, so independent of test order);
* ``loss_step0``: the first batch's loss (fused and reference must agree: checked).

extra_info of a ``validation`` case: ``val_s``, ``n_trials``, ``s_per_trial``,
``projected_official_val_s`` (the release's 1,426 validation trials) and
``projected_61_validations_min`` (one run: a validation every 2,000 batches and at the end).

Shapes. GPU: the official ones: B=64, 4 days per batch, 512 features, T near 800 (synthetic
sentences of 5-8 words: T ~ 20.5 x phonemes + 206), GRU 5 x 768, bf16 autocast, fused AdamW.
CPU (no GPU): the small synthetic preset (32 features, T ~ 250-450), B=4, GRU 2 x 32, float32,
one intra-op thread, the fused kernels in the Triton interpreter: CPU figures (``cpu_figures``
true), a smoke test of the suite, never a speed claim.

Run: /work/venv/bin/python -m pytest bench/test_bench_step.py --benchmark-only -q
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch

from bench_helpers import DEVICE, ON_GPU, median_seconds, peak_memory_bytes, run_bench
from fastbci import synth
from fastbci.data.batch import Batch
from fastbci.training import Trainer
from fastbci.validation import run_validation
from fastbci.config import load_config
from fastbci.ops.day_projection import day_projection
from fastbci.ops.patchify import patchify

CASES = {"fused": ("fused", "philox"), "reference": ("reference", "philox"),
         "official": ("reference", "torch")}
OFFICIAL_BATCHES = 120_000
OFFICIAL_VAL_TRIALS = 1_426
OFFICIAL_VALIDATIONS = 61
N_PLAN = 400  # batches in each trainer's plan (the timed steps cycle through them)

if ON_GPU:
    RELEASE = dict(sessions=4, n_train=32, n_val=40, n_test=0, neural_dim=512, min_words=5,
                   max_words=8, train_only=[])
    OVERRIDES = ["dataset.batch_size=64", "dataset.days_per_batch=4", "use_amp=true"]
    REPEAT = 10
else:
    RELEASE = dict(synth.PRESETS["small"])
    OVERRIDES = ["model.n_units=32", "model.n_layers=2", "dataset.batch_size=4",
                 "dataset.days_per_batch=2", "use_amp=false"]
    REPEAT = 3
LOSS_RTOL = 2e-2 if ON_GPU else 1e-5  # bf16 autocast + bf16 tensor cores vs float32


class Case:
    """A set-up trainer and a cursor over its batch plan."""

    def __init__(self, name: str, release, out):
        impl, rng = CASES[name]
        self.name = name
        cfg = load_config(release["config"], OVERRIDES + [
            f"output_dir={out}", f"checkpoint_dir={out}/checkpoint",
            f"num_training_batches={N_PLAN}", f"fastbci.impl={impl}", f"fastbci.rng={rng}",
            f"fastbci.device={DEVICE.type}", "fastbci.progress=false", "fastbci.plot=false",
            "fastbci.store_device=auto"])
        self.trainer = Trainer(cfg, console=False).setup()
        self.k = 0
        torch.manual_seed(0)  # the GRU dropout stream: the same for every case's first batch
        self.loss_step0 = float(self.step().loss)

    def step(self):
        out = self.trainer.train_step(self.k % N_PLAN)
        self.k += 1
        return out

    def _batch(self, k: int) -> Batch:
        tr = self.trainer
        return tr.builder.batch(tr.train_store, np.asarray(tr.plan[k % N_PLAN]), mode="train",
                                step=k % N_PLAN)

    def data_path(self):
        self.k += 1
        return self._batch(self.k - 1)

    def pre_gru(self, backward: bool):
        """Data path + day projection + patchify (forward, and backward when asked), as the
        model runs them (public ops, the model's parameters and impl)."""
        tr = self.trainer
        model, k = tr.model, self.k
        self.k += 1
        batch = self._batch(k)
        present, local = batch.days_present, batch.local_day_idx
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if tr.builder.amp \
            else contextlib.nullcontext()
        with amp:
            w = torch.stack([model.day_weights[d] for d in present])
            b = torch.cat([model.day_biases[d] for d in present])
            p = model.input_dropout if model.rng == "philox" else 0.0
            y = day_projection(batch.features, local, w, b, p, tr.builder.seed, k % N_PLAN,
                               impl=model.impl)
            if model.rng == "torch":
                y = torch.nn.functional.dropout(y, model.input_dropout, training=True)
            x = patchify(y, model.patch_size, model.patch_stride, impl=model.impl)
        if backward:
            x.float().sum().backward()
            model.zero_grad(set_to_none=True)
        return x


def host_syncs(fn) -> int | None:
    """How many synchronising CUDA calls torch reports while ``fn`` runs once (None on CPU).

    Counts what ``torch.cuda.set_sync_debug_mode("warn")`` flags (``.item()``, ``.cpu()``,
    blocking copies, ...); copies from pageable host memory, which the driver serialises
    without torch knowing, are not counted."""
    if not ON_GPU:
        return None
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_step")
    return synth.write_release(root, seed=0, **RELEASE)


@pytest.fixture(scope="module")
def cases(release, tmp_path_factory):
    threads = torch.get_num_threads()
    if not ON_GPU:
        torch.set_num_threads(1)  # a busy 2-core CI machine: OpenMP spin-waits dominate tiny steps
    built: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in built:
            built[name] = Case(name, release, tmp_path_factory.mktemp(f"run_{name}"))
        return built[name]

    yield get
    torch.set_num_threads(threads)


def _info(release, **extra):
    info = {"cpu_figures": not ON_GPU, "shape": " ".join(OVERRIDES),
            "neural_dim": RELEASE["neural_dim"], "mean_T": release["n_time_steps"]["mean"],
            "max_T": release["n_time_steps"]["max"]}
    if not ON_GPU:
        info["note"] = ("CPU figures at small shapes, one thread, fused kernels in the Triton "
                        "interpreter: not a GPU measurement, not a speed claim")
    info.update(extra)
    return info


@pytest.mark.parametrize("case", list(CASES))
def test_bench_train_step(benchmark, release, cases, case):
    benchmark.group = "train_step"
    c = cases(case)
    out = c.step()
    assert out.finite and float(out.loss) > 0, f"{case}: step gave loss {float(out.loss)}"
    if case == "fused":  # same streams as the reference: same first loss (a fast wrong step fails)
        ref0 = cases("reference").loss_step0
        assert abs(c.loss_step0 - ref0) <= LOSS_RTOL * abs(ref0), \
            f"fused first loss {c.loss_step0} vs reference {ref0} (rtol {LOSS_RTOL})"
    info = {"loss_step0": c.loss_step0}
    if not benchmark.disabled:
        step_s = median_seconds(c.step, repeat=REPEAT)
        data_s = median_seconds(c.data_path, repeat=REPEAT)
        fwd_s = median_seconds(c.pre_gru, False, repeat=REPEAT)
        fwd_bwd_s = median_seconds(c.pre_gru, True, repeat=REPEAT)
        info.update(step_s=step_s, data_path_s=data_s, pre_gru_forward_s=fwd_s,
                    pre_gru_fwd_bwd_s=fwd_bwd_s, day_patch_forward_s=max(fwd_s - data_s, 0.0),
                    day_patch_backward_s=max(fwd_bwd_s - fwd_s, 0.0),
                    pre_gru_share=fwd_bwd_s / step_s, gru_and_rest_s=max(step_s - fwd_bwd_s, 0.0),
                    projected_120k_batches_h=step_s * OFFICIAL_BATCHES / 3600)
        if case == "fused":
            for other in ("reference", "official"):
                info[f"speedup_vs_{other}"] = median_seconds(cases(other).step,
                                                             repeat=REPEAT) / step_s
        mem = peak_memory_bytes(c.step)
        if mem is not None:
            info["peak_memory_bytes"] = mem
            info["host_syncs_per_step"] = host_syncs(c.step)
    run_bench(benchmark, c.step, rounds=20 if ON_GPU else 3, warmup=1, **_info(release, **info))


@pytest.mark.parametrize("case", ["fused", "reference"])
def test_bench_validation(benchmark, release, cases, case):
    benchmark.group = "validation"
    tr = cases(case).trainer
    assert tr.val_plan, "the synthetic release has no validation trials"

    def validate():
        return run_validation(tr.model, tr.val_store, tr.val_plan, tr.builder)

    res = validate()
    assert res.per is not None and res.loss is not None and np.isfinite(res.loss), res
    n_trials = int(sum(len(r) for r in tr.val_plan))
    info = {"n_trials": n_trials, "n_batches": len(tr.val_plan)}
    if not benchmark.disabled:
        val_s = median_seconds(validate, repeat=5 if ON_GPU else 2)
        per_trial = val_s / n_trials
        info.update(val_s=val_s, s_per_trial=per_trial,
                    projected_official_val_s=per_trial * OFFICIAL_VAL_TRIALS,
                    projected_61_validations_min=per_trial * OFFICIAL_VAL_TRIALS
                    * OFFICIAL_VALIDATIONS / 60)
        if case == "fused":
            ref = cases("reference").trainer
            t_ref = median_seconds(lambda: run_validation(ref.model, ref.val_store, ref.val_plan,
                                                          ref.builder),
                                   repeat=5 if ON_GPU else 2)
            info["speedup_vs_reference"] = t_ref / val_s
    run_bench(benchmark, validate, rounds=5 if ON_GPU else 2, warmup=1, **_info(release, **info))
