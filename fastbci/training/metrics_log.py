"""The run's metrics: ``metrics.jsonl`` (one JSON object per train log and per validation, the
record every tool reads), plus TensorBoard event files when ``fastbci.tensorboard=true`` and the
``tensorboard`` package is installed."""
from __future__ import annotations

import json
import logging
import math
import numbers
from pathlib import Path

from fastbci import fileio, outputs

__all__ = ["MetricsLog", "TENSORBOARD_DIR"]

#: the TensorBoard folder inside ``output_dir``
TENSORBOARD_DIR = "tensorboard"
#: the numeric fields of a record that become TensorBoard scalars (``SPLIT/FIELD``)
_SCALARS = ("loss", "per", "blank_fraction", "lr", "grad_norm")


def _tensorboard_writer(folder: Path, log: logging.Logger | None):
    """A ``SummaryWriter`` on ``folder``, or None (with a warning) without ``tensorboard``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        if log is not None:
            log.warning(f"fastbci.tensorboard=true but TensorBoard cannot be imported ({e}): "
                        "metrics go to metrics.jsonl only; install it with pip install tensorboard")
        return None
    return SummaryWriter(log_dir=str(folder))


class MetricsLog:
    """``metrics.jsonl`` and, with ``tensorboard_dir``, the same numbers as TensorBoard scalars
    (``train/loss``, ``val/per``, ``val_per_by_day/SESSION``, ... at the batch index).
    ``enabled=False`` (processes other than the main one) writes nothing."""

    def __init__(self, path: Path, enabled: bool = True, tensorboard_dir: Path | None = None,
                 log: logging.Logger | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self._tb_dir = tensorboard_dir if enabled else None
        self._log = log
        self._tb = None
        if self._tb_dir is not None:
            self._open_tensorboard()

    def _open_tensorboard(self):
        self._tb = _tensorboard_writer(self._tb_dir, self._log)
        if self._tb is not None:  # TensorBoard writes its own files: the folder is fastbci's
            outputs.record(self._tb_dir, tree=True)
        if self._tb is None:
            self._tb_dir = None  # not installed: said once, not tried again
        return self._tb

    @property
    def tensorboard(self) -> bool:
        """True when TensorBoard event files are written."""
        return self._tb_dir is not None

    def append(self, record: dict) -> None:
        """One record (standard JSON: a non-finite number is written as null)."""
        if not self.enabled:
            return
        fileio.append_line(self.path, fileio.dumps(record))
        tb = self._tb if self._tb is not None or self._tb_dir is None else self._open_tensorboard()
        if tb is None:
            return
        k, split = int(record["batch"]), record.get("split", "train")
        for key in _SCALARS:
            v = record.get(key)
            if isinstance(v, numbers.Real) and math.isfinite(v):
                tb.add_scalar(f"{split}/{key}", float(v), k)
        for session, v in (record.get("per_by_day") or {}).items():
            if isinstance(v, numbers.Real) and math.isfinite(v):
                tb.add_scalar(f"{split}_per_by_day/{session}", float(v), k)
        tb.flush()

    def truncate(self, next_batch: int) -> None:
        """Drop the records past a resume point (the resumed run writes them again,
        identically), atomically: a kill during the rewrite leaves the old file whole.
        TensorBoard keeps both: it shows the later write of a step."""
        if not (self.enabled and self.path.is_file()):
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["batch"] < next_batch:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        fileio.atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def records(self) -> list[dict]:
        """Every record of ``metrics.jsonl`` (unreadable lines skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def close(self) -> None:
        """Close the TensorBoard writer (a later record opens it again)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
