"""Test-time day adaptation (``fastbci evaluate --adapt-day``; docs/calibration.md): before a
split is scored, each day's layer is refined on that split's own trials of the day through
pseudo-labels (:mod:`fastbci.calibration.rounds`), without any label. What a clinic gets on a
day without a single labelled sentence.

:class:`DayAdaptation` is the adapter :func:`fastbci.evaluation.evaluate` takes (``adapt=``):
``adapter(model, cfg, store, device) -> report``, the store without labels.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Mapping

import numpy as np
import torch

from fastbci.data.store import TrialStore
from fastbci.errors import ConfigError
from fastbci.model import GRUDecoder

from .core import Budget, NewDay, builder_for, train_only_day
from .rounds import Rounds, run_rounds

__all__ = ["DayAdaptation"]


@dataclasses.dataclass(frozen=True)
class DayAdaptation:
    """Adapt every day layer of a model on the trials of that day in an unlabelled store:
    ``rounds`` rounds of pseudo-labels from the current layer, each keeping the ``keep`` most
    confident fraction of the day's trials (their loss weighted by confidence) and training
    ``steps // rounds`` steps of ``batch_size`` trials with the calibration's optimiser and
    augmentation; ``seed`` makes it deterministic (the same seed, model and trials give the same
    layers, bit for bit). The GRU, the output layer and every other day stay as they were."""
    rounds: int = 3
    keep: float = 0.5
    steps: int = Budget.steps
    batch_size: int = Budget.batch_size
    seed: int = 0

    def __post_init__(self):
        for name, lo in (("rounds", 1), ("steps", 1), ("batch_size", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"day adaptation: {name.replace('_', ' ')} must be an integer "
                                  f">= {lo}, got {v!r}")
        if not 0 < self.keep <= 1:
            raise ConfigError(f"day adaptation: keep must be in (0, 1], got {self.keep!r}")

    def __call__(self, model: GRUDecoder, cfg: Mapping, store: TrialStore, device: torch.device,
                 say: Callable[[str], None] = lambda s: None) -> dict:
        """Adapt, in place, the layer of every day with trials in ``store`` (which must hold no
        labels); returns the report: the settings, and per session its day, trials, steps and
        rounds (the trials kept per round), and the seconds."""
        if store.has_labels:
            raise ValueError("day adaptation reads no labels: pass the split's trials without "
                             "them (fastbci.evaluation.without_labels)")
        t0 = time.perf_counter()
        budget = Budget(steps=self.steps, batch_size=self.batch_size)
        plan = Rounds(rounds=self.rounds, keep=self.keep, steps=max(1, self.steps // self.rounds))
        sessions = cfg["dataset"]["sessions"]
        builder = builder_for(cfg, device, self.seed)  # stateless: its streams are keyed by step
        grad = {name: p.requires_grad for name, p in model.named_parameters()}
        days = {}
        try:
            for day, rows in enumerate(store.trials_by_day):
                if not len(rows):
                    continue
                train_only_day(model, day)
                nd = NewDay(dict(cfg), model, day, sessions[day], store, labelled=False,
                            replaced=True)
                steps, rounds = run_rounds(nd, store, np.asarray(rows), builder, budget, plan,
                                           self.seed, say=say)
                days[sessions[day]] = {"day": day, "trials": int(len(rows)), "steps": steps,
                                       "rounds": rounds}
                say(f"adapted day {day} ({sessions[day]}) on {len(rows)} trials: {steps} steps")
        finally:
            for name, p in model.named_parameters():
                p.requires_grad_(grad[name])
            model.eval()
        return {**dataclasses.asdict(self), "days": days, "seconds": time.perf_counter() - t0}
