"""Validation during training: when it runs, what it logs, the best checkpoint, early stopping
and the blank-collapse watch."""
from __future__ import annotations

import logging
import time
from typing import Callable, Mapping

import numpy as np
import torch

from fastbci import checkpoint as ckpt_io
from fastbci import fileio
from fastbci.devices import numerics
from fastbci.training import report
from fastbci.training.diagnostics import CollapseWatch
from fastbci.validation import (ValResult, ValTrials, is_new_best, pack_trials, run_validation,
                                should_stop_early)


def emulate_loader_draw(rng: str) -> None:
    """rng=torch: each official DataLoader iterator (one per validation, one for training)
    draws its base seed from torch's CPU generator; mirror that draw so that the official random
    streams line up."""
    if rng == "torch":
        torch.empty((), dtype=torch.int64).random_()


class Validator:
    """The official validation cadence (every ``batches_per_val_step`` batches and at the last
    batch) and what follows a validation: the log and metrics record, the best checkpoint (PER,
    ties by loss) with ``val_metrics.json`` / ``val_logits.npz``, ``save_all_val_steps``, the
    collapse watch and early stopping. :meth:`step` returns ``(status, message)`` to stop.

    ``on_validation(k, record) -> str | None``, when set (the trainer sets it from its own
    argument), is called after every validation with the batch ``k`` and the validation's
    record (the ``metrics.jsonl`` line: ``per``, ``loss``, ``blank_fraction``...); a returned
    reason stops the run with the status ``pruned`` (after the collapse watch's own stop, which
    comes first), with the resumable checkpoint of any stop. A hyperparameter search reports each
    validation and prunes through it."""

    def __init__(self, cfg: Mapping, model, store, batches: list[np.ndarray], builder, parallel,
                 checkpointer, metrics, state, log: logging.Logger):
        self.cfg = cfg
        self.model, self.store, self.batches, self.builder = model, store, batches, builder
        self.parallel, self.checkpointer, self.metrics, self.state = parallel, checkpointer, metrics, state
        self.log = log
        self.every = int(cfg["batches_per_val_step"])
        self.n_batches = int(cfg["num_training_batches"])
        self.keep_logits = bool(cfg["save_val_metrics"] and cfg["save_val_logits"])
        warmup = max(int(cfg["lr_warmup_steps"]), int(cfg["lr_warmup_steps_day"]))
        self.collapse = CollapseWatch(cfg, warmup)
        self.on_validation: Callable[[int, dict], str | None] | None = None

    def due(self, k: int) -> bool:
        """True when the official cadence validates after batch ``k``."""
        return bool(self.batches) and (k % self.every == 0 or k == self.n_batches - 1)

    def run(self, collect: bool = False) -> ValResult:
        """The model on the whole validation plan (``collect``: keep the per-trial outputs)."""
        with numerics(self.builder.device):
            return run_validation(self.model, self.store, self.batches, self.builder,
                                  collect=collect, share=self.parallel.share,
                                  all_sum=self.parallel.all_sum)

    def step(self, k: int) -> tuple[str, str] | None:
        """Validate after batch ``k`` and act on it; ``(status, message)`` to stop, else None."""
        self.log.info(f"Running validation after training batch: {k}")
        t0 = time.time()
        emulate_loader_draw(self.builder.rng)
        res = self.run(collect=self.keep_logits)
        record = self._record(k, res, time.time() - t0)
        st = self.state
        if is_new_best(res.per, res.loss, st.best_val_per, st.best_val_loss):
            self._new_best(res, record)
        else:
            st.val_steps_since_improvement += 1
        if self.cfg["save_all_val_steps"]:
            self.checkpointer.save(f"checkpoint_batch_{k}", res.per, res.loss)
        prune = self.on_validation(k, dict(record)) if self.on_validation is not None else None
        msg = self.collapse.check(k, res.blank_fraction, st)
        if msg is not None:
            self.log.error(msg)
            return "collapsed", msg
        if prune:
            msg = f"Pruned at batch {k}: {prune}"
            self.log.info(msg)
            return "pruned", msg
        if should_stop_early(self.cfg, st.val_steps_since_improvement):
            msg = (f"Overall validation PER has not improved in "
                   f"{self.cfg['early_stopping_val_steps']} validation steps. Stopping training "
                   f"early at batch: {k}")
            self.log.info(msg)
            return "early_stopped", msg
        return None

    def _record(self, k: int, res: ValResult, seconds: float) -> dict:
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
                  "lr": self.checkpointer.optimizer.param_groups[-1]["lr"],
                  "seconds": self.state.seconds()}
        self.metrics.append(record)
        self.state.val_history.append(record)
        return record

    def _new_best(self, res: ValResult, record: dict) -> None:
        st = self.state
        if res.per < st.best_val_per:
            self.log.info(f"New best val PER {report.fmt(st.best_val_per)} --> {res.per:.4f}")
        else:
            self.log.info(f"New best val loss {st.best_val_loss:.4f} --> {res.loss:.4f}")
        st.best_val_per, st.best_val_loss = res.per, res.loss
        st.val_steps_since_improvement = 0
        if self.cfg["save_best_checkpoint"]:
            p = self.checkpointer.save(ckpt_io.BEST_NAME, res.per, res.loss)
            self.log.info(f"Saved best checkpoint: {p}")
        if not self.cfg["save_val_metrics"]:
            return
        parts = self.parallel.gather_objects(res.trials) if self.keep_logits else None
        trials = None if parts is None else ValTrials.merge(parts)
        if self.parallel.is_main:
            folder = self.checkpointer.run_dir.checkpoint_dir
            fileio.atomic_write_text(folder / "val_metrics.json", fileio.dumps(record, indent=1))
            if trials is not None:
                packed = pack_trials(trials, self.store)
                fileio.atomic_write(folder / "val_logits.npz", lambda f: np.savez(f, **packed),
                                    mode="wb")
