"""What a run tells its user: the logger (``train.log`` and the console), the progress bar,
honest step timing, torch.compile's recompile count and the training curves (the metrics
files: :mod:`fastbci.training.metrics_log`)."""
from __future__ import annotations

import errno
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fastbci import fileio


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


class _LogFileHandler(logging.FileHandler):
    """``train.log``: a full disk stops the file log with one line on stderr (instead of a
    "--- Logging error ---" block per message); the run goes on, and the next checkpoint
    write reports the full disk as an error."""

    def handleError(self, record):
        err = sys.exc_info()[1]
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"fastbci: no space left writing {self.baseFilename}: the log file stops here "
                  "(the console log goes on)", file=sys.stderr)
            logging.getLogger(LOGGER_NAME).removeHandler(self)
            return
        super().handleError(record)


def make_logger(log_file: Path | None, console: bool = True) -> logging.Logger:
    """The run's logger: ``log_file`` and, with ``console``, stderr (through tqdm; stdout carries
    only what a command's --json prints)."""
    log = logging.getLogger(LOGGER_NAME)
    for h in log.handlers[:]:
        log.removeHandler(h)
        h.close()
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt_ = logging.Formatter(fmt="%(asctime)s: %(message)s")
    if log_file is not None:
        fh = _LogFileHandler(log_file)
        fh.setFormatter(fmt_)
        log.addHandler(fh)
    if console:
        sh = _TqdmHandler(sys.stderr)
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


class EarlyLog:
    """Messages of a run's start, kept until its logger exists (the output folder is created
    only once the data has loaded), then replayed into it."""

    def __init__(self):
        self.lines: list[tuple[int, str]] = []

    def info(self, msg: str) -> None:
        self.lines.append((logging.INFO, msg))

    def warning(self, msg: str) -> None:
        self.lines.append((logging.WARNING, msg))

    def replay(self, log: logging.Logger) -> None:
        for level, msg in self.lines:
            log.log(level, msg)
        self.lines.clear()


class LineProgress:
    """Progress for a log file or a pipe (stderr is not a terminal): one plain line every
    ``every`` batches instead of tqdm's redraws. The subset of tqdm's interface the loop uses."""

    def __init__(self, total: int, initial: int, every: int, stream=None):
        self.total, self.n, self.every = total, initial, max(1, every)
        self.stream = stream or sys.stderr
        self._t0, self._n0 = time.time(), initial
        self._postfix: dict[str, str] = {}

    def set_postfix(self, refresh: bool = False, **kw) -> None:
        self._postfix = {k: str(v) for k, v in kw.items()}

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % self.every == 0 or self.n >= self.total:
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        dt = max(time.time() - self._t0, 1e-9)
        rate = (self.n - self._n0) / dt
        left = (self.total - self.n) / rate if rate > 0 else float("nan")
        eta = "?" if left != left else time.strftime("%H:%M:%S", time.gmtime(left))
        extra = "".join(f", {k} {v}" for k, v in self._postfix.items())
        return (f"[train] batch {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.1f}%), "
                f"{rate:.2f} batch/s, ETA {eta}{extra}")

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, n_batches: int, start: int, stream=None):
    """A tqdm bar on a terminal, :class:`LineProgress` (a line every 1% of the run, at least
    every 200 batches) when stderr is redirected, or None."""
    if not enabled:
        return None
    stream = stream or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return LineProgress(n_batches, start, min(200, max(1, n_batches // 100)), stream)
    from tqdm import tqdm
    return tqdm(total=n_batches, initial=start, file=stream, unit="batch",
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


def _frames_compiled() -> int:
    """Frames torch.compile (Dynamo) has compiled in this process so far."""
    from torch._dynamo.utils import counters
    return int(counters["frames"]["ok"])


class CompileWatch:
    """Counts the recompilations of a ``torch.compile``'d training forward, for the train log.

    The first call compiles the model's graphs (two for the GRUDecoder: before and after the
    eagerly run GRU); every frame Dynamo compiles after it is a recompile (a guard failed, e.g.
    a new grad mode or a batch of one trial). With ``dynamic=True`` new batch lengths and steps
    recompile nothing. A forward hook on the compiled wrapper (which runs outside the graph)
    marks the end of the first call. ``compiled`` None: compilation is off, nothing is logged.
    """

    def __init__(self, compiled: torch.nn.Module | None, log=None):
        self.enabled = compiled is not None
        self._base: int | None = None
        if self.enabled:
            self._hook = compiled.register_forward_hook(self._first_call_done)
            if log is not None:
                log.info("torch.compile: on (dynamic shapes; the GRU runs eagerly between the "
                         "compiled graphs); recompiles are counted in the train log")

    def _first_call_done(self, module, args, output) -> None:
        self._base = _frames_compiled()
        self._hook.remove()

    def recompiles(self) -> int:
        """Frames compiled after the first call (0 before it)."""
        return 0 if self._base is None else _frames_compiled() - self._base

    def note(self) -> str:
        """`` recompiles: N`` for the train log line, empty when compilation is off."""
        return f" recompiles: {self.recompiles()}" if self.enabled else ""


def curves_figure(records: list[dict], train_losses: np.ndarray | None = None,
                  title: str | None = None):
    """The training curves as a matplotlib Figure (Agg), or None when there is nothing to draw:
    loss (train, val), validation PER, and the learning rate with the blank fraction, against
    the batch; ``title``: the run's name. Its lines carry labels (``learning rate``, ``blank
    fraction (train)``, ...)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("split") != "val"]
    val = [r for r in records if r.get("split") == "val"]
    have_losses = train_losses is not None and np.isfinite(train_losses).any()
    if not train and not val and not have_losses:
        return None
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    _plot_losses(ax1, train, val, train_losses if have_losses else None)
    if val:
        ax2.plot([r["batch"] for r in val], [100 * r["per"] if r["per"] is not None else np.nan
                                             for r in val], "o-", color="tab:red", ms=3,
                 label="validation PER")
        pers = [100 * r["per"] for r in val if r["per"] is not None]
        if pers and max(pers) > 100:  # the first validations can exceed 100%: keep the scale readable
            ax2.set_ylim(0, 100)
            ax2.set_title("(PER above 100% clipped)", fontsize=9)
    ax2.set_xlabel("batch")
    ax2.set_ylabel("validation PER (%)")
    ax2.grid(alpha=0.3)
    _plot_lr_and_blank(ax3, train, val)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(records: list[dict], png_path: Path, train_losses: np.ndarray | None = None,
                title: str | None = None) -> Path | None:
    """:func:`curves_figure` saved as a PNG at ``png_path`` (None when there is nothing to
    draw), atomically: a kill or a full disk leaves the previous image (or none)."""
    import matplotlib.pyplot as plt
    fig = curves_figure(records, train_losses, title)
    if fig is None:
        return None
    try:
        with fileio.atomic_path(png_path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return Path(png_path)


def _num(v) -> float:
    return np.nan if v is None else float(v)


def _plot_losses(ax, train: list[dict], val: list[dict], train_losses: np.ndarray | None) -> None:
    if train_losses is not None:
        x = np.arange(len(train_losses))
        ok = np.isfinite(train_losses)
        ax.plot(x[ok], train_losses[ok], color="tab:blue", alpha=0.25, lw=0.8, label="train (batch)")
        w = max(1, int(ok.sum()) // 100)
        if w > 1:
            sm = np.convolve(train_losses[ok], np.ones(w) / w, mode="valid")
            ax.plot(x[ok][w - 1:], sm, color="tab:blue", lw=1.5, label=f"train (mean of {w})")
    elif train:
        ax.plot([r["batch"] for r in train], [_num(r["loss"]) for r in train], color="tab:blue",
                label="train")
    if val:
        ax.plot([r["batch"] for r in val], [_num(r["loss"]) for r in val], "o-", color="tab:red",
                ms=3, label="validation")
    ax.set_xlabel("batch")
    ax.set_ylabel("CTC loss")
    ax.set_yscale("log")
    ax.legend()


def _plot_lr_and_blank(ax, train: list[dict], val: list[dict]) -> None:
    ax.plot([r["batch"] for r in train], [_num(r.get("lr")) for r in train], color="tab:green",
            label="learning rate")
    ax.set_xlabel("batch")
    ax.set_ylabel("learning rate", color="tab:green")
    twin = ax.twinx()
    twin.plot([r["batch"] for r in train], [_num(r.get("blank_fraction")) for r in train],
              color="tab:gray", alpha=0.6, label="blank fraction (train)")
    twin.plot([r["batch"] for r in val], [_num(r.get("blank_fraction")) for r in val], "o-",
              color="black", ms=3, label="blank fraction (validation)")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("blank fraction of the greedy outputs")
    twin.legend(loc="center right", fontsize=8)
