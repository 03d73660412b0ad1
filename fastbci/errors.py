"""Exit statuses shared by every fastbci command, and the errors that stop a training run.

``python -m fastbci.train``, ``fastbci.evaluate``, ``fastbci.doctor`` and ``fastbci.demo`` exit
with the same codes: 0 done, 2 bad input (configuration, data, checkpoint, file system), 3 the
blank-collapse watch stopped training, 4 a non-finite loss or gradient stopped it, 130
interrupted (a resumable checkpoint was saved), 5 an optional component the command needs is
not installed (flashlight-text for word decoding). ``fastbci.doctor`` also exits 1 when it finds
a severe risk in a configuration.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_SEVERE = 1
EXIT_CONFIG = 2
EXIT_COLLAPSE = 3
EXIT_NONFINITE = 4
EXIT_UNAVAILABLE = 5
EXIT_INTERRUPTED = 130


class TrainingStopped(RuntimeError):
    """Training stopped before the last batch for a reason the user must see."""
    exit_code = 1


class NonFiniteError(TrainingStopped):
    """A non-finite loss or gradient under ``fastbci.nonfinite_policy=stop``."""
    exit_code = EXIT_NONFINITE


def exit_code_of(status: str) -> int:
    """The exit status of a training run's final ``status``."""
    return {"collapsed": EXIT_COLLAPSE, "nonfinite": EXIT_NONFINITE,
            "interrupted": EXIT_INTERRUPTED}.get(status, EXIT_OK)
