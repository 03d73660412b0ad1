"""Stopping a run from outside, without losing work: Ctrl-C (SIGINT) and SIGTERM (what ``kill``,
SLURM and other batch schedulers send before they kill a job, and what ``torchrun`` forwards to
its workers) ask the loop to stop after the current batch; the loop then saves a resumable
checkpoint and the command exits 130 with the resume command. A second Ctrl-C stops at once
(nothing saved since the last checkpoint). The same in one process and in every rank of a
distributed run, where the ranks agree on the stop in the next step."""
from __future__ import annotations

import signal
import threading
from typing import Callable

#: the signals that stop a run after the current batch
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class StopRequest:
    """Where a stop request lands: ``reason`` is None until a signal (or :meth:`ask`) sets it.

    Used as a context manager it routes :data:`STOP_SIGNALS` here and puts the previous handlers
    back on exit (only on the main thread, where Python allows handlers). ``log(message)`` says
    what happens."""

    def __init__(self, log: Callable[[str], None] = lambda message: None):
        self.reason: str | None = None
        self._log = log
        self._old: dict = {}

    def ask(self, reason: str = "interrupt") -> None:
        """Stop after the current batch (the first reason given is kept)."""
        self.reason = self.reason or reason

    def _handle(self, signum: int, frame) -> None:
        name = _NAMES.get(signum, f"signal {signum}")
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.reason is None:
            self._log(f"{name}: stopping after this batch and saving a resumable checkpoint"
                      + (" (press Ctrl-C again to stop at once without saving)"
                         if signum == signal.SIGINT else ""))
        self.ask("interrupt" if signum == signal.SIGINT else "terminate")

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
