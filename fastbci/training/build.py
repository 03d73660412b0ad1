"""``build(cfg, parallel) -> RunParts``: every part of a training run, made in the official
order (seeds, model, batch plans, re-seeding, optimiser), checked before anything is created
on disk. The loop itself is :func:`fastbci.training.loop.fit`."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Mapping

import numpy as np
import torch

from fastbci import data, schedule
from fastbci.data.batch import BatchBuilder
from fastbci.data.store import TrialStore
from fastbci.devices import select_device
from fastbci.errors import ConfigError
from fastbci.model import GRUDecoder
from fastbci.ops.dispatch import describe
from fastbci.training import report
from fastbci.training.checkpointer import Checkpointer, seed_everything
from fastbci.training.diagnostics import startup_warnings
from fastbci.training.metrics_log import TENSORBOARD_DIR, MetricsLog
from fastbci.training.parallel import SingleProcess, check_world_size
from fastbci.training.rundir import RunDir
from fastbci.training.state import RunState
from fastbci.training.step import TrainStep
from fastbci.training.validator import Validator
from fastbci.validation import val_batches


@dataclasses.dataclass
class RunParts:
    """The parts of one training run (see :func:`build`)."""
    cfg: dict
    parallel: SingleProcess
    run_dir: RunDir
    log: logging.Logger
    device: torch.device
    train_store: TrialStore
    val_store: TrialStore
    plan: data.BatchPlan
    model: GRUDecoder            # the model itself (checkpoints, validation)
    net: torch.nn.Module         # what the training forward runs through (DDP / compile around it)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    builder: BatchBuilder
    step: TrainStep
    state: RunState
    checkpointer: Checkpointer
    validator: Validator
    metrics: MetricsLog
    compile_watch: report.CompileWatch
    console: bool                # the log and the progress bar on the console
    loader_drawn: bool           # rng=torch: the train DataLoader's seed draw is done (or resumed)

    @property
    def val_plan(self) -> list[np.ndarray]:
        return self.validator.batches


def _load_stores(cfg: Mapping, device: torch.device, log, progress: bool):
    """Both splits, loaded once, checked and placed (before the model is built)."""
    ds, fb = cfg["dataset"], cfg["fastbci"]
    t0 = time.time()
    # a split headed for the GPU is not pinned first (10.7 GB of page-locked memory for the
    # official train split, only to be copied once); one that stays on the host is pinned then
    to_gpu = device.type == "cuda" and fb["store_device"] != "cpu"
    stores = {}
    for split in ("train", "val"):
        st = TrialStore.from_config(cfg, split, device="cpu", pin_memory=False if to_gpu else None,
                                    progress=progress)
        if st.skipped:
            log.info(f"{split}: skipped {len(st.skipped)} bad trial(s) "
                     f"(fastbci.bad_trial_policy=skip): " +
                     "; ".join(f"{s} {f} trial {t}: {r}" for s, f, t, r in st.skipped[:10]))
        placed = st.placed(device, fb["store_device"])
        if device.type == "cuda" and placed.device.type == "cpu":
            log.info(f"{split} store ({st.nbytes() / 2**30:.1f} GiB) does not fit beside the model: "
                     "it stays in pinned host memory")
        stores[split] = placed
    train, val = stores["train"], stores["val"]
    if not train.has_labels:
        raise ConfigError("the train split has no phoneme labels (seq_class_ids / seq_len)")
    if train.n_trials == 0:
        raise ConfigError(f"no usable training trial in {ds['dataset_dir']} (every one was "
                          "skipped: see the reasons above)")
    for d, (p, f) in enumerate(zip(ds["dataset_probability_val"], val.files)):
        if p and f is None:
            log.info(f"Day {d} ({ds['sessions'][d]}) has dataset_probability_val {p:g} but no "
                     "data_val.hdf5: it is not validated")
    log.info(f"Data: {train.n_trials} train trials, {val.n_trials} val trials, loaded in "
             f"{time.time() - t0:.1f} s")
    return train, val


def _model(cfg: Mapping, device: torch.device, log) -> GRUDecoder:
    """Seeds, then the model (official order), its trainability, on the device."""
    seed_everything(int(cfg["seed"]))
    model = GRUDecoder.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    day = sum(p.numel() for n, p in model.named_parameters() if "day" in n)
    log.info(f"Model has {total:,} parameters ({day:,} day-specific, "
             f"{100.0 * day / max(total, 1):.2f}%)")
    m = cfg["model"]
    for name, p in model.named_parameters():
        if not m["rnn_trainable"] and "gru" in name:
            p.requires_grad_(False)
        elif not m["input_network"]["input_trainable"] and "day" in name:
            p.requires_grad_(False)
    return model


def _plans(cfg: Mapping, train: TrialStore, val: TrialStore, log):
    """The official batch plans (after the model, as official), then the dataset's re-seeding."""
    ds = cfg["dataset"]
    plan = data.train_batch_plan(train.trials_by_day, int(cfg["num_training_batches"]),
                                 ds["batch_size"], ds["days_per_batch"], ds["seed"],
                                 must_include_days=ds["must_include_days"],
                                 day_names=data.session_labels(train.sessions, train.files))
    vplan = val_batches(cfg, val) if val.has_labels else []
    # the official val dataset re-seeds numpy and torch with dataset.seed after the plan
    if int(ds["seed"]) != -1:
        np.random.seed(int(ds["seed"]))
        torch.manual_seed(int(ds["seed"]))
    log.info(f"{len(vplan)} validation batches")
    if not vplan:
        log.info("No validation trial: validation, best checkpoint and the collapse watch are off")
    return plan, vplan


def _start(cfg: Mapping, parallel, console: bool) -> dict:
    """Everything up to the optimiser, on every rank (errors are agreed on by the caller)."""
    check_world_size(cfg, parallel.world_size)
    run_dir = RunDir(cfg, parallel.is_main)  # the folder policy, decided before anything is made
    early = report.EarlyLog()
    device = select_device(cfg, early, local_rank=parallel.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    fb = cfg["fastbci"]
    early.info(f"Using device: {device} (impl {fb['impl']}: {describe(device, fb['impl'])}; "
               f"rng {fb['rng']})")
    if fb["rng"] == "torch" and fb["impl"] != "reference":
        early.info("fastbci.rng=torch draws in the official order, which only the reference "
                   "data path can do: the augmentation runs through the reference ops")
    progress = parallel.is_main and bool(fb["progress"]) and console
    train, val = _load_stores(cfg, device, early, progress)
    log = run_dir.create(early, console)
    for line in startup_warnings(cfg):
        log.warning(line)
    model = _model(cfg, device, log)
    plan, vplan = _plans(cfg, train, val, log)
    model.to(device)
    optimizer = schedule.make_optimizer(model, cfg, device)
    return dict(run_dir=run_dir, log=log, device=device, train=train, val=val, model=model,
                plan=plan, vplan=vplan, optimizer=optimizer,
                scheduler=schedule.make_scheduler(optimizer, cfg),
                builder=BatchBuilder.from_config(cfg, device))


def _restore(cfg: Mapping, p: dict, parallel, metrics: MetricsLog
             ) -> tuple[RunState, Checkpointer, dict | None]:
    """The run state, its checkpointer, and what the run starts from: a resumed run, another
    run's weights, or nothing; ``args.yaml`` written."""
    state = RunState.fresh(int(cfg["num_training_batches"]), p["device"])
    ck = Checkpointer(cfg, p["run_dir"], p["model"], p["optimizer"], p["scheduler"], state,
                      parallel, p["log"])
    resume = None
    if cfg["init_from_checkpoint"] and p["run_dir"].resume_from is None:
        ck.init_from(cfg["init_checkpoint_path"])
    if p["run_dir"].resume_from is not None:
        resume = ck.resume(p["run_dir"].resume_from)
        metrics.truncate(state.next_batch)
    p["run_dir"].write_config(cfg)
    return state, ck, resume


def build(cfg: Mapping, parallel=None, *, console: bool = True) -> RunParts:
    """Every part of a training run of ``cfg`` on ``parallel`` (default one process)."""
    parallel = parallel or SingleProcess()
    cfg = dict(cfg)

    def start():
        p = _start(cfg, parallel, console)
        out = p["run_dir"].output_dir
        tb = out / TENSORBOARD_DIR if cfg["fastbci"]["tensorboard"] else None
        metrics = MetricsLog(out / "metrics.jsonl", parallel.is_main, tb, p["log"])
        return p, metrics, *_restore(cfg, p, parallel, metrics)

    p, metrics, state, ck, resume = parallel.agree(start)
    log, model = p["log"], p["model"]
    net = parallel.wrap(model)
    ck.seed_streams(resume)
    line = parallel.describe(cfg)
    if line:
        log.info(line)
    if cfg["fastbci"]["compile"]:  # the training forward compiled (validation stays eager)
        net = torch.compile(net, dynamic=True)
    watch = report.CompileWatch(net if cfg["fastbci"]["compile"] else None, log)
    step = TrainStep(net, p["optimizer"], p["scheduler"], parallel, p["builder"], p["train"],
                     cfg["grad_norm_clip_value"], int(cfg["dataset"]["seed"]),
                     list(model.parameters()))
    validator = Validator(cfg, model, p["val"], p["vplan"], p["builder"], parallel, ck, metrics,
                          state, log)
    return RunParts(cfg=cfg, parallel=parallel, run_dir=p["run_dir"], log=log, device=p["device"],
                    train_store=p["train"], val_store=p["val"], plan=p["plan"], model=model,
                    net=net, optimizer=p["optimizer"], scheduler=p["scheduler"],
                    builder=p["builder"], step=step, state=state, checkpointer=ck,
                    validator=validator, metrics=metrics, compile_watch=watch, console=console,
                    loader_drawn=resume is not None)
