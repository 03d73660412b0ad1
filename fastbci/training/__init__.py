"""The training side of fastbci, one module per responsibility (docs/internals.md):

* :mod:`~fastbci.training.loop`: :class:`Trainer` (builds the parts; ``fit`` is the cadence);
* :mod:`~fastbci.training.step`: one optimisation step -> :class:`StepResult`;
* :mod:`~fastbci.training.strategy`: :class:`SingleProcess` and :class:`DataParallel`;
* :mod:`~fastbci.training.state`: :class:`RunState`, the output-directory and resume policy;
* :mod:`~fastbci.training.report`: logger, ``metrics.jsonl``, progress, timing, plots;
* :mod:`~fastbci.training.diagnostics`: non-finite report, blank-collapse watch.
"""
from fastbci.training.loop import FitSummary, Trainer, seed_everything
from fastbci.training.state import RunState
from fastbci.training.step import StepResult
from fastbci.training.strategy import DataParallel, DistEnv, SingleProcess
from fastbci.validation import ValResult, run_validation

__all__ = ["Trainer", "FitSummary", "seed_everything", "RunState", "StepResult", "SingleProcess",
           "DataParallel", "DistEnv", "ValResult", "run_validation"]
