"""A new recording day for a trained model: one more day layer, fitted to a few sentences of the
new session while everything else stays frozen (docs/calibration.md).

* :func:`calibrate`: the whole calibration of a session file, written to a folder, with its
  :class:`CalibrationReport` (what ``fastbci calibrate`` runs);
* the parts (:mod:`fastbci.calibration.core`): :func:`new_day`, :func:`choose_init_day`,
  :func:`train_layer`, :func:`pseudo_label`, :func:`evaluate_per`, :class:`Budget`;
* pseudo-label rounds (:mod:`fastbci.calibration.rounds`): :func:`run_rounds`, :class:`Rounds`
  (``--unlabelled``, ``--unlabelled-rest``);
* test-time day adaptation (:mod:`fastbci.calibration.adapt`): :class:`DayAdaptation`, the
  adapter of :func:`fastbci.evaluation.evaluate` (``fastbci evaluate --adapt-day``).
"""
from .core import (Budget, CalibrationError, NewDay, builder_for, choose_init_day, evaluate_per,
                   extended_config, layer_of, load_session, new_day, pseudo_label, set_layer,
                   train_layer, with_labels)
from .adapt import DayAdaptation
from .rounds import Rounds, run_rounds
from .run import CHECKPOINT_NAME, REPORT_NAME, CalibrationReport, Settings, calibrate

__all__ = ["Budget", "CHECKPOINT_NAME", "CalibrationError", "CalibrationReport", "DayAdaptation", "NewDay",
           "REPORT_NAME", "Rounds", "Settings", "builder_for", "calibrate", "choose_init_day",
           "evaluate_per", "extended_config", "layer_of", "load_session", "new_day", "pseudo_label",
           "run_rounds", "set_layer", "train_layer", "with_labels"]
