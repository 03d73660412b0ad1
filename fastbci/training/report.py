"""What a run tells its user: the logger (``train.log`` and the console), ``metrics.jsonl``,
the progress bar, honest step timing and the training curves."""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

LOGGER_NAME = "fastbci.train"


def fmt(x: float | None, spec: str = ".4f") -> str:
    """A number for a log line; ``n/a`` for None or NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints through tqdm so the progress bar stays intact."""

    def emit(self, record):
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def make_logger(log_file: Path | None, console: bool = True) -> logging.Logger:
    """The run's logger: ``log_file`` and, with ``console``, stdout (through tqdm)."""
    log = logging.getLogger(LOGGER_NAME)
    for h in log.handlers[:]:
        log.removeHandler(h)
        h.close()
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt_ = logging.Formatter(fmt="%(asctime)s: %(message)s")
    if log_file is not None:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt_)
        log.addHandler(fh)
    if console:
        sh = _TqdmHandler(sys.stdout)
        sh.setFormatter(fmt_)
        log.addHandler(sh)
    return log


def silent_logger() -> logging.Logger:
    """The logger of a process that must not print (ranks > 0 of a distributed run: every
    message they could log, rank 0 logs too)."""
    log = logging.getLogger(LOGGER_NAME)
    for h in log.handlers[:]:
        log.removeHandler(h)
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


class MetricsFile:
    """``metrics.jsonl``: one JSON object per train log and per validation. ``enabled=False``
    (processes other than the main one) writes nothing."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def append(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate(self, next_batch: int) -> None:
        """Drop the records past a resume point (the resumed run writes them again, identically)."""
        if not (self.enabled and self.path.is_file()):
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["batch"] < next_batch:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        self.path.write_text("".join(k + "\n" for k in keep))

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def progress_bar(enabled: bool, n_batches: int, start: int):
    """A tqdm bar on stderr over the run's batches, or None."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=n_batches, initial=start, file=sys.stderr, unit="batch",
                dynamic_ncols=True, desc="train", smoothing=0.05)


class StepTimer:
    """Wall time of one training step, honest on an asynchronous device.

    On CUDA two events bracket the step on the current stream and :meth:`stop` waits for the
    second one, so the figure covers the step's device work (a host clock alone would stop when
    the last kernel is queued, not when it has run); elsewhere a host clock. Only the timed
    (log) steps pay the wait."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
        self._t0: float | None = None

    def start(self) -> None:
        if self.cuda:
            self._begin.record()
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        """Seconds since :meth:`start` (on CUDA: between the events, after waiting for them)."""
        if self._t0 is None:
            raise RuntimeError("StepTimer.stop() without start()")
        self._t0, t0 = None, self._t0
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            return self._begin.elapsed_time(self._end) / 1000.0
        return time.perf_counter() - t0


def plot_curves(records: list[dict], png_path: Path,
                train_losses: np.ndarray | None = None) -> Path | None:
    """Loss (train, val) and validation PER against the batch (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("split") != "val"]
    val = [r for r in records if r.get("split") == "val"]
    have_losses = train_losses is not None and np.isfinite(train_losses).any()
    if not train and not val and not have_losses:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if have_losses:
        x = np.arange(len(train_losses))
        ok = np.isfinite(train_losses)
        ax1.plot(x[ok], train_losses[ok], color="tab:blue", alpha=0.25, lw=0.8, label="train (batch)")
        w = max(1, int(ok.sum()) // 100)
        if w > 1:
            sm = np.convolve(train_losses[ok], np.ones(w) / w, mode="valid")
            ax1.plot(x[ok][w - 1:], sm, color="tab:blue", lw=1.5, label=f"train (mean of {w})")
    elif train:
        ax1.plot([r["batch"] for r in train], [r["loss"] for r in train], color="tab:blue", label="train")
    if val:
        ax1.plot([r["batch"] for r in val], [r["loss"] for r in val], "o-", color="tab:red", ms=3,
                 label="validation")
        ax2.plot([r["batch"] for r in val], [100 * r["per"] if r["per"] is not None else np.nan
                                             for r in val], "o-", color="tab:red", ms=3)
        pers = [100 * r["per"] for r in val if r["per"] is not None]
        if pers and max(pers) > 100:  # the first validations can exceed 100%: keep the scale readable
            ax2.set_ylim(0, 100)
            ax2.set_title("(PER above 100% clipped)", fontsize=9)
    ax1.set_xlabel("batch")
    ax1.set_ylabel("CTC loss")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.set_xlabel("batch")
    ax2.set_ylabel("validation PER (%)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)
