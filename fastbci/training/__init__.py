"""The training side of fastbci, as components (docs/internals.md has the module map):

* :mod:`~fastbci.training.build`: ``build(cfg, parallel) -> RunParts``, every part of a run;
* :mod:`~fastbci.training.loop`: :func:`fit`, the loop itself, and :class:`Trainer`;
* :mod:`~fastbci.training.step`: one optimisation step -> :class:`StepResult`;
* :mod:`~fastbci.training.parallel`: :class:`SingleProcess` and :class:`DataParallel` (torch's
  DistributedDataParallel under ``torchrun``);
* :mod:`~fastbci.training.rundir`: the output folder policy and its files;
* :mod:`~fastbci.training.checkpointer`: save, resume, init from a checkpoint, seeding;
* :mod:`~fastbci.training.validator`: the validation cadence, best checkpoint, early stop and
  collapse watch (the evaluation itself is :mod:`fastbci.validation`);
* :mod:`~fastbci.training.metrics_log`: ``metrics.jsonl`` (and TensorBoard);
* :mod:`~fastbci.training.state`: :class:`RunState`, every counter of a run;
* :mod:`~fastbci.training.signals`: Ctrl-C and SIGTERM stop after the batch, with a checkpoint;
* :mod:`~fastbci.training.report`: logger, progress, timing, plots;
* :mod:`~fastbci.training.diagnostics`: non-finite report, blank-collapse watch.
"""
from fastbci.training.build import RunParts, build
from fastbci.training.checkpointer import seed_everything
from fastbci.training.loop import FitSummary, Trainer, fit
from fastbci.training.parallel import DataParallel, DistEnv, SingleProcess
from fastbci.training.state import RunState
from fastbci.training.step import StepResult

__all__ = ["Trainer", "FitSummary", "fit", "build", "RunParts", "seed_everything", "RunState",
           "StepResult", "SingleProcess", "DataParallel", "DistEnv"]
