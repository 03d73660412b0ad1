"""The trainer: :class:`Trainer` builds the parts of a run (files, device, model, data, optimiser,
state) and :meth:`Trainer.fit` is only the cadence of the official loop: train steps, train
logs, validations, checkpoints, stops. One process or many is the strategy's business
(:mod:`fastbci.training.strategy`)."""
from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from fastbci import checkpoint as ckpt_io
from fastbci import config as config_mod
from fastbci import fileio, metrics, schedule
from fastbci.config import ConfigError
from fastbci.data.batch import BatchBuilder
from fastbci.devices import numerics, resolve_impl, to_device
from fastbci.errors import NonFiniteError
from fastbci.training import report
from fastbci.training.diagnostics import CollapseWatch, nonfinite_message, startup_warnings
from fastbci.training.state import OutputPlan, RunState, apply_output_plan, plan_output_dir, resume_path
from fastbci.training.step import StepResult, TrainStep
from fastbci.training.strategy import SingleProcess
from fastbci.validation import (ValResult, ValTrials, is_new_best, pack_trials,
                                         run_validation, should_stop_early, val_batches)

#: ``output_dir/run_status.json``: how the last ``fit`` of the run ended (status, last batch)
RUN_STATUS = "run_status.json"

#: configuration keys whose change does not make a resumed run differ from an uninterrupted one
_RESUME_NEUTRAL = ("fastbci.resume", "fastbci.overwrite", "fastbci.progress", "fastbci.plot",
                   "num_training_batches", "output_dir", "checkpoint_dir")


def seed_everything(seed: int) -> None:
    """The official trainer's seeding before the model is built (skipped when ``seed == -1``)."""
    if seed != -1:
        np.random.seed(seed)
        random.seed(seed)
        torch.manual_seed(seed)


@dataclasses.dataclass
class FitSummary:
    """How :meth:`Trainer.fit` ended: ``status`` is ``finished``, ``early_stopped``,
    ``collapsed``, ``nonfinite`` or ``interrupted``."""
    status: str
    message: str
    last_batch: int
    best_val_per: float | None
    best_val_loss: float | None
    nonfinite_skipped: int
    train_losses: np.ndarray
    val_history: list[dict]
    seconds: float


class Trainer:
    """Official-recipe training with fastbci's data path, resume and diagnostics.

    ``Trainer(cfg).fit()`` runs the whole loop; ``strategy`` spreads it over processes
    (default :class:`SingleProcess`); only the main process writes files, logs and shows
    progress. Exit statuses of the CLI: :mod:`fastbci.errors`.
    """

    def __init__(self, cfg: Mapping, strategy: SingleProcess | None = None, *, console: bool = True,
                 resume_command: str | None = None):
        if cfg["mode"] != "train":
            raise ConfigError(f"mode is {cfg['mode']!r}: the trainer needs mode=train "
                              "(use python -m fastbci.evaluate to evaluate a checkpoint)")
        self.cfg = copy.deepcopy(dict(cfg))
        self.strategy = strategy or SingleProcess()
        self.console = console
        self.resume_command = resume_command  # what an interrupted run tells the user to run
        self.fb = self.cfg["fastbci"]
        self.output_dir = Path(self.cfg["output_dir"])
        self.checkpoint_dir = Path(self.cfg["checkpoint_dir"])
        self.log: logging.Logger = logging.getLogger(report.LOGGER_NAME)
        self.metrics = report.MetricsFile(self.output_dir / "metrics.jsonl", self.is_main)
        self._local_stop: str | None = None   # a stop asked of this process (Ctrl-C, SIGTERM)
        self._stop: str | None = None         # the stop every process agreed on
        self._resume_info: dict | None = None
        self._loader_draw_done = False
        self._t_start = time.time()
        self._last_batch = -1
        self._setup_done = False

    @property
    def is_main(self) -> bool:
        """True on the process that owns side effects (files, logs, progress bar)."""
        return self.strategy.is_main

    def request_stop(self, reason: str = "interrupt") -> None:
        """Stop after the current batch (after the processes agree), saving a resumable
        checkpoint; Ctrl-C calls this."""
        self._local_stop = reason

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> "Trainer":
        """Output directory, logging, device, seeds, model, data, optimiser, resume."""
        if self._setup_done:
            return self
        if not self.is_main:
            self.log = report.silent_logger()
        self.strategy.agree(self._build)
        self.strategy.attach(self.model)
        self.strategy.seed_streams(self.cfg, self._resume_info, self.log)
        line = self.strategy.describe(self.cfg)
        if line:
            self.log.info(line)
        self._setup_done = True
        return self

    def _build(self) -> None:
        cfg = self.cfg
        self.strategy.check(cfg)
        # nothing is created before the configuration, the output folder and the data are
        # known to be good: a failed start leaves nothing behind that blocks the next one
        out_plan = plan_output_dir(cfg) if self.is_main else OutputPlan(resume_path(cfg), [])
        early = report.EarlyLog()
        self.device = self.strategy.choose_device(cfg, early)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.impl = resolve_impl(cfg, self.device)
        self.rng = self.fb["rng"]
        early.info(f"Using device: {self.device} (impl {self.impl}, rng {self.rng})")
        if self.impl == "fused" and self.rng == "torch":
            early.info("fastbci.rng=torch draws in the official order, which only the reference "
                       "data path can do: the augmentation runs through the reference ops")
        self._load_stores(early)
        self._t_start = time.time()
        if self.is_main:
            apply_output_plan(out_plan)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            self.log = report.make_logger(self.output_dir / "train.log", console=self.console)
            for d in (self.output_dir, self.checkpoint_dir):
                for t in fileio.remove_stale_temporaries(d):
                    early.info(f"Removed {t}, left by an interrupted write")
        if out_plan.why == "leftovers":
            early.info(f"Reusing {self.output_dir}: it held only the files of a start that never "
                       "trained (no checkpoint)")
        early.replay(self.log)
        for line in startup_warnings(cfg):
            self.log.warning(line)
        self._build_model()
        self._draw_plans()
        self._build_optimisation()
        self.state = RunState.fresh(int(cfg["num_training_batches"]), self.device)
        if cfg["init_from_checkpoint"] and out_plan.resume_from is None:
            self._init_from_checkpoint(cfg["init_checkpoint_path"])
        if out_plan.resume_from is not None:
            self._resume(out_plan.resume_from)
        if self.is_main:
            config_mod.dump(cfg, self.checkpoint_dir / "args.yaml")
            config_mod.dump(cfg, self.output_dir / "args.yaml")

    def _build_model(self) -> None:
        """Seeds, then the model (official order)."""
        seed_everything(int(self.cfg["seed"]))
        from fastbci.model import GRUDecoder
        self.model = GRUDecoder.from_config(self.cfg, impl=self.impl, rng=self.rng)
        total = sum(p.numel() for p in self.model.parameters())
        day = sum(p.numel() for n, p in self.model.named_parameters() if "day" in n)
        self.log.info(f"Model has {total:,} parameters ({day:,} day-specific, "
                      f"{100.0 * day / max(total, 1):.2f}%)")

    def _load_stores(self, log) -> None:
        """Both splits, loaded once and checked (before the model is built)."""
        from fastbci import data
        cfg, ds = self.cfg, self.cfg["dataset"]
        t0 = time.time()
        # a store headed for the GPU is not pinned first (10.7 GB of page-locked memory for the
        # train split, only to be copied once); one that stays on the host is pinned then
        to_gpu = self.device.type == "cuda" and self.fb["store_device"] != "cpu"
        progress = self.is_main and self._progress_on()
        stores = {}
        for split in ("train", "val"):
            st = data.TrialStore.from_config(cfg, split, device="cpu",
                                             pin_memory=False if to_gpu else None, progress=progress)
            if st.skipped:
                log.info(f"{split}: skipped {len(st.skipped)} bad trial(s) "
                         f"(fastbci.bad_trial_policy=skip): " +
                         "; ".join(f"{s} {f} trial {t}: {r}" for s, f, t, r in st.skipped[:10]))
            stores[split] = self._place_store(st, split, log)
        self.train_store, self.val_store = stores["train"], stores["val"]
        if not self.train_store.has_labels:
            raise ConfigError("the train split has no phoneme labels (seq_class_ids / seq_len)")
        if self.train_store.n_trials == 0:
            raise ConfigError(f"no usable training trial in {ds['dataset_dir']} (every one was "
                              "skipped: see the reasons above)")
        for d, (p, f) in enumerate(zip(ds["dataset_probability_val"], self.val_store.files)):
            if p and f is None:
                log.info(f"Day {d} ({ds['sessions'][d]}) has dataset_probability_val "
                         f"{p:g} but no data_val.hdf5: it is not validated")
        log.info(f"Data: {self.train_store.n_trials} train trials, {self.val_store.n_trials} val "
                 f"trials, loaded in {time.time() - t0:.1f} s")

    def _draw_plans(self) -> None:
        """The official batch plans (after the model, as official), then the dataset's
        re-seeding."""
        from fastbci import data
        cfg, ds = self.cfg, self.cfg["dataset"]
        self.plan = data.train_batch_plan(self.train_store.trials_by_day,
                                          int(cfg["num_training_batches"]), ds["batch_size"],
                                          ds["days_per_batch"], ds["seed"],
                                          must_include_days=ds["must_include_days"])
        self.val_plan = val_batches(cfg, self.val_store) if self.val_store.has_labels else []
        # the official val dataset re-seeds numpy and torch with dataset.seed after the plan
        if int(ds["seed"]) != -1:
            np.random.seed(int(ds["seed"]))
            torch.manual_seed(int(ds["seed"]))
        self.log.info(f"{len(self.val_plan)} validation batches")
        if not self.val_plan:
            self.log.info("No validation trial: validation, best checkpoint and the collapse "
                          "watch are off")

    def _place_store(self, store, split: str, log):
        want = self.fb["store_device"]
        if self.device.type != "cuda" or want == "cpu":
            return store
        if want == "auto":
            free, _ = torch.cuda.mem_get_info(self.device)
            if store.nbytes() > 0.5 * free:
                log.info(f"{split} store ({store.nbytes() / 2**30:.1f} GiB) does not fit beside "
                              f"the model ({free / 2**30:.1f} GiB free): it stays in pinned host memory")
                return store.pin_memory()
        return store.to(self.device)

    def _build_optimisation(self) -> None:
        """Trainability (official), device, optimiser, scheduler, the batch builder, the step."""
        m = self.cfg["model"]
        for name, p in self.model.named_parameters():
            if not m["rnn_trainable"] and "gru" in name:
                p.requires_grad_(False)
            elif not m["input_network"]["input_trainable"] and "day" in name:
                p.requires_grad_(False)
        self.model.to(self.device)
        self.optimizer = schedule.make_optimizer(self.model, self.cfg, self.device)
        self.scheduler = schedule.make_scheduler(self.optimizer, self.cfg)
        self.builder = BatchBuilder(self.cfg, self.device, self.impl, self.rng)
        # fastbci.compile: the training forward through torch.compile (validation stays eager)
        net = torch.compile(self.model, dynamic=True) if self.fb["compile"] else self.model
        self.compile_watch = report.CompileWatch(net if self.fb["compile"] else None, self.log)
        self._step = TrainStep(net, self.optimizer, self.scheduler, self.strategy,
                               self.builder, self.train_store, self.cfg["grad_norm_clip_value"])

    def _init_from_checkpoint(self, path) -> None:
        if path in (None, "None", ""):
            raise ConfigError("init_from_checkpoint=true needs init_checkpoint_path=PATH")
        ck = ckpt_io.load(path, map_location=self.device, trust=self.fb["trust_checkpoint"])
        self.model.load_official_state_dict(ck["model_state_dict"])
        if "optimizer_state_dict" in ck:
            self.optimizer.load_state_dict(ck["optimizer_state_dict"])
        if "scheduler_state_dict" in ck:
            self.scheduler.load_state_dict(ck["scheduler_state_dict"])
            # fix: the official trainer restarts its loop at batch 0 here; continue instead
            self.state.next_batch = int(self.scheduler.last_epoch)
        self.state.best_val_per = float(ck.get("val_PER", self.state.best_val_per))
        self.state.best_val_loss = float(ck.get("val_loss", self.state.best_val_loss))
        self.log.info(f"Initialised from checkpoint {path}; continuing at batch "
                      f"{self.state.next_batch} (random streams restart: not an exact resume; "
                      "use fastbci.resume for that)")

    def _resume(self, path: Path) -> None:
        ck = ckpt_io.load(path, map_location=self.device, trust=self.fb["trust_checkpoint"])
        st = ckpt_io.resume_state_of(ck, path)
        a, b = config_mod.flatten(st.get("config") or {}), config_mod.flatten(self.cfg)
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUME_NEUTRAL)
        if changed:
            self.log.info("Resuming with configuration changes (the run will differ from an "
                          "uninterrupted one): " + ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
                                                             for k in changed))
        self.model.load_official_state_dict(ck["model_state_dict"])
        self.optimizer.load_state_dict(ck["optimizer_state_dict"])
        self.scheduler.load_state_dict(ck["scheduler_state_dict"])
        self.state.load_dict(st)
        ckpt_io.restore_rng_state(st["rng"])
        self._resume_info = st
        self._loader_draw_done = True
        self.metrics.truncate(self.state.next_batch)
        self.log.info(f"Resumed from {path} at batch {self.state.next_batch}")

    def _progress_on(self) -> bool:
        return bool(self.fb["progress"]) and self.console

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, name: str, val_per=None, val_loss=None) -> Path | None:
        """Write ``checkpoint_dir/name`` (official format + resume state at the current batch);
        a collective call (every process's generator states go in), the main process writes."""
        rng_by_rank = self.strategy.gather_objects(ckpt_io.capture_rng_state())
        if not self.is_main:
            return None
        resume = {**self.state.to_dict(time.time() - self._t_start),
                  "rng": ckpt_io.capture_rng_state(), "config": self.cfg,
                  "world_size": self.strategy.world_size, "rng_by_rank": rng_by_rank}
        path = self.checkpoint_dir / name
        ck = ckpt_io.build_checkpoint(self.model.official_state_dict(), self.optimizer,
                                      self.scheduler, val_per, val_loss, resume)
        ckpt_io.atomic_save(ck, path)
        config_mod.dump(self.cfg, self.checkpoint_dir / "args.yaml")
        return path

    # -- one step -----------------------------------------------------------------------------
    def train_step(self, k: int) -> StepResult:
        """One optimisation step on training batch ``k`` (its loss recorded in the run state)."""
        with numerics(self.device):
            res = self._step(k, np.asarray(self.plan[k]), self._local_stop is not None)
        self.state.train_losses[k] = res.loss.float()
        return res

    def _emulate_loader_draw(self) -> None:
        """rng=torch: each official DataLoader iterator draws its base seed from torch's CPU
        generator; mirror that draw so the official random streams line up."""
        if self.rng == "torch":
            torch.empty((), dtype=torch.int64).random_()

    def _train_batch(self, k: int, timer: report.StepTimer, bar) -> None:
        """Train batch ``k``: the step, the non-finite policy, the train log, the progress."""
        timed = k % max(1, int(self.cfg["batches_per_train_log"])) == 0
        if timed:
            timer.start()
        res = self.train_step(k)
        self._last_batch = k
        self.state.next_batch = k + 1
        self._stop = self._stop or self.strategy.stop_agreed(self._local_stop, res.stop_voted)
        if not res.finite:
            msg = nonfinite_message(k, res, self.strategy.all_gather(res.per_trial.float()),
                                    self.train_store, self.cfg)
            if self.fb["nonfinite_policy"] != "skip":
                self.log.error(msg + "\n  Training stopped (fastbci.nonfinite_policy=stop; use "
                               "=skip to skip such batches)")
                raise NonFiniteError(msg)
            self.state.nonfinite_skipped += 1
            self.log.warning(msg + f"\n  fastbci.nonfinite_policy=skip: batch {k} skipped "
                             f"({self.state.nonfinite_skipped} so far)")
        if timed:
            self._train_log(k, res, timer.stop(), bar)
        if bar is not None:
            bar.update(1)

    def _train_log(self, k: int, res: StepResult, step_seconds: float, bar) -> None:
        b = res.batch
        st = metrics.greedy_stats(res.logits, res.lens, b.labels, b.label_lens,
                                  width=b.max_input_len, max_label_len=b.max_label_len)
        # edits, blank frames, valid frames, true phonemes: summed over the processes' shares
        dev = res.logits.device
        stats = torch.cat([torch.stack([st.edits.sum(), st.blank, st.frames]).to(torch.float64),
                           to_device(np.array([float(b.n_label_total)]), dev)])
        edits, n_blank, n_frames, n_labels = self.strategy.all_sum(stats).tolist()
        loss, gnorm, lr = float(res.loss), float(res.grad_norm), res.lr
        bf = n_blank / n_frames if n_frames else float("nan")
        per = metrics.phoneme_error_rate(edits, n_labels) if n_labels else None
        self.log.info(f"Train batch {k}: loss: {loss:.2f} grad norm: {gnorm:.2f} lr: {lr:.3g} "
                      f"PER: {report.fmt(per)} blank: {bf:.3f} time: {step_seconds:.3f}"
                      f"{self.compile_watch.note()}")
        self.metrics.append({"batch": k, "split": "train", "loss": loss, "per": per,
                             "per_by_day": {}, "blank_fraction": bf, "lr": lr, "grad_norm": gnorm,
                             "seconds": self._seconds()})
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", gnorm=f"{gnorm:.2f}", refresh=False)

    def _seconds(self) -> float:
        return self.state.elapsed + time.time() - self._t_start

    # -- validation ---------------------------------------------------------------------------
    def validate(self, collect: bool = False) -> ValResult:
        """The model on the whole validation plan (``collect``: keep the per-trial outputs)."""
        with numerics(self.device):
            return run_validation(self.model, self.val_store, self.val_plan,
                                  self.builder, collect=collect, share=self.strategy.share,
                                  all_sum=self.strategy.all_sum)

    def _gather_trials(self, res: ValResult) -> ValTrials | None:
        """Every process's per-trial outputs, on the main process (None elsewhere)."""
        parts = self.strategy.gather_objects(res.trials)
        return None if parts is None else ValTrials.merge(parts)

    def _validation_step(self, k: int) -> tuple[str, str] | None:
        """Validate after batch ``k``; returns ``(status, message)`` to stop, else None."""
        cfg = self.cfg
        self.log.info(f"Running validation after training batch: {k}")
        t0 = time.time()
        self._emulate_loader_draw()
        keep_logits = bool(cfg["save_val_metrics"] and cfg["save_val_logits"])
        res = self.validate(collect=keep_logits)
        record = self._log_validation(k, res, time.time() - t0)
        if is_new_best(res.per, res.loss, self.state.best_val_per, self.state.best_val_loss):
            self._new_best(k, res, record, keep_logits)
        else:
            self.state.val_steps_since_improvement += 1
        if cfg["save_all_val_steps"]:
            self.save_checkpoint(f"checkpoint_batch_{k}", res.per, res.loss)
        msg = self._collapse.check(k, res.blank_fraction, self.state)
        if msg is not None:
            self.log.error(msg)
            return "collapsed", msg
        if should_stop_early(cfg, self.state.val_steps_since_improvement):
            msg = (f"Overall validation PER has not improved in {cfg['early_stopping_val_steps']} "
                   f"validation steps. Stopping training early at batch: {k}")
            self.log.info(msg)
            return "early_stopped", msg
        return None

    def _log_validation(self, k: int, res: ValResult, seconds: float) -> dict:
        sessions = self.cfg["dataset"]["sessions"]
        self.log.info(f"Val batch {k}: PER (avg): {report.fmt(res.per)} CTC Loss (avg): "
                      f"{report.fmt(res.loss)} blank: {res.blank_fraction:.3f} time: {seconds:.3f}")
        per_by_day = res.per_by_day
        if self.cfg["log_individual_day_val_PER"]:
            for d, p in per_by_day.items():
                self.log.info(f"{sessions[d]} val PER: {report.fmt(p)}")
        record = {"batch": k, "split": "val", "loss": res.loss, "per": res.per,
                  "per_by_day": {sessions[d]: p for d, p in per_by_day.items()},
                  "blank_fraction": res.blank_fraction,
                  "lr": self.optimizer.param_groups[-1]["lr"], "seconds": self._seconds()}
        self.metrics.append(record)
        self.state.val_history.append(record)
        return record

    def _new_best(self, k: int, res: ValResult, record: dict, keep_logits: bool) -> None:
        st = self.state
        if res.per < st.best_val_per:
            self.log.info(f"New best val PER {report.fmt(st.best_val_per)} --> {res.per:.4f}")
        else:
            self.log.info(f"New best val loss {st.best_val_loss:.4f} --> {res.loss:.4f}")
        st.best_val_per, st.best_val_loss = res.per, res.loss
        st.val_steps_since_improvement = 0
        if self.cfg["save_best_checkpoint"]:
            p = self.save_checkpoint(ckpt_io.BEST_NAME, res.per, res.loss)
            self.log.info(f"Saved best checkpoint: {p}")
        if not self.cfg["save_val_metrics"]:
            return
        trials = self._gather_trials(res) if keep_logits else None
        if self.is_main:
            fileio.atomic_write_text(self.checkpoint_dir / "val_metrics.json",
                                     fileio.dumps(record, indent=1))
            if trials is not None:
                packed = pack_trials(trials, self.val_store)
                fileio.atomic_write(self.checkpoint_dir / "val_logits.npz",
                                    lambda f: np.savez(f, **packed), mode="wb")

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> FitSummary:
        """Train from the current batch to ``num_training_batches``.

        ``stop_after``: stop (as on Ctrl-C: resumable checkpoint, status ``interrupted``) once
        this many batches have run in this call; for wall-time-limited jobs and tests.
        """
        self.setup()
        cfg = self.cfg
        n_batches = int(cfg["num_training_batches"])
        val_every = max(1, int(cfg["batches_per_val_step"]))
        ck_every = int(self.fb["checkpoint_every"])
        self._collapse = CollapseWatch(cfg, max(int(cfg["lr_warmup_steps"]),
                                                int(cfg["lr_warmup_steps_day"])))
        self._t_start = time.time()
        status, message = "finished", ""
        self._last_batch = self.state.next_batch - 1
        old_handlers = self.strategy.install_signals(self._on_signal)
        bar = report.progress_bar(self.is_main and self._progress_on(), n_batches,
                                  self.state.next_batch)
        if not self._loader_draw_done:
            self._emulate_loader_draw()
            self._loader_draw_done = True
        timer = report.StepTimer(self.device)
        ran = 0
        try:
            with numerics(self.device):
                for k in range(self.state.next_batch, n_batches):
                    self._train_batch(k, timer, bar)
                    ran += 1
                    is_val = bool(self.val_plan) and (k % val_every == 0 or k == n_batches - 1)
                    stop = self._validation_step(k) if is_val else None
                    if is_val or (ck_every > 0 and (k + 1) % ck_every == 0):
                        self.save_checkpoint(ckpt_io.RESUME_NAME)
                    if stop is not None:
                        status, message = stop
                        break
                    if stop_after is not None and ran >= stop_after:
                        self._stop = self._stop or "stop_after"
                    if self._stop is not None and k < n_batches - 1:
                        status, message = "interrupted", self._interrupted(k)
                        break
        except NonFiniteError as e:
            status, message = "nonfinite", str(e)
        except KeyboardInterrupt:
            status = "interrupted"
            p = ckpt_io.find_resume_checkpoint(self.checkpoint_dir)
            message = ("Interrupted in the middle of a batch: nothing saved now; " +
                       (f"the last resumable checkpoint is {p} (resume with fastbci.resume=true)"
                        if p else "no resumable checkpoint exists yet"))
            self.log.info(message)
        finally:
            if bar is not None:
                bar.close()
            self.strategy.restore_signals(old_handlers)
        return self._finish(status, message, self._last_batch)

    def _interrupted(self, k: int) -> str:
        p = self.save_checkpoint(ckpt_io.RESUME_NAME)
        command = self.resume_command or (f"{self.strategy.launch_hint} CONFIG "
                                          f"output_dir={self.output_dir} "
                                          f"checkpoint_dir={self.checkpoint_dir} fastbci.resume=true")
        message = f"Interrupted after batch {k}; resumable checkpoint saved to {p}. Resume with: {command}"
        self.log.info(message)
        return message

    def _on_signal(self, signum: int) -> None:
        import signal
        if signum == signal.SIGINT:
            if self._local_stop is not None:
                raise KeyboardInterrupt
            self.log.info("Ctrl-C: stopping after this batch and saving a resumable checkpoint "
                          "(press Ctrl-C again to stop at once without saving)")
            self.request_stop("interrupt")
        else:
            self.request_stop("terminate")

    def _finish(self, status: str, message: str, last: int) -> FitSummary:
        st = self.state
        if status in ("finished", "early_stopped") and self.cfg["save_final_model"]:
            v = st.val_history[-1] if st.val_history else {}
            p = self.save_checkpoint(f"final_checkpoint_batch_{last}", v.get("per"), v.get("loss"))
            self.log.info(f"Saved final model to {p}")
        elapsed = self._seconds()
        self.log.info(f"Best avg val PER achieved: {report.fmt(st.best_val_per, '.5f')}")
        self.log.info(f"Total training time: {elapsed / 60:.2f} minutes (status: {status})")
        if st.nonfinite_skipped:
            self.log.info(f"Skipped {st.nonfinite_skipped} batch(es) with a non-finite loss or gradient")
        losses = st.train_losses.cpu().numpy()
        if self.is_main:
            fileio.atomic_write_text(self.output_dir / RUN_STATUS, fileio.dumps(
                {"status": status, "last_batch": last, "num_training_batches":
                 int(self.cfg["num_training_batches"]), "best_val_PER": st.summary_value("best_val_per")},
                indent=1))
        if self.is_main and self.fb["plot"]:
            try:
                report.plot_curves(self.metrics.records(), self.output_dir / "training_curves.png",
                                   losses, title=f"{self.output_dir.name}: {status}")
            except Exception as e:  # a plot must never fail a finished run
                self.log.info(f"Could not draw the curves: {e}")
        return FitSummary(status=status, message=message, last_batch=last,
                          best_val_per=st.summary_value("best_val_per"),
                          best_val_loss=st.summary_value("best_val_loss"),
                          nonfinite_skipped=st.nonfinite_skipped, train_losses=losses,
                          val_history=list(st.val_history), seconds=elapsed)
