"""The run's state: :class:`RunState`, every counter of a run, once, with its checkpoint form."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping

import numpy as np
import torch


#: the checkpoint keys of the counters (official spelling ``best_val_PER`` kept on disk)
_KEYS = {"next_batch": "next_batch", "best_val_per": "best_val_PER",
         "best_val_loss": "best_val_loss",
         "val_steps_since_improvement": "val_steps_since_improvement",
         "collapse_count": "collapse_count", "warmup_blank_count": "warmup_blank_count",
         "nonfinite_skipped": "nonfinite_skipped",
         "elapsed": "elapsed"}


@dataclasses.dataclass
class RunState:
    """Everything a run counts. ``train_losses`` lives on the training device (a step writes
    its loss there without a host read); the rest are host values."""
    train_losses: torch.Tensor               # (num_training_batches,) float32, NaN until run
    next_batch: int = 0
    best_val_per: float = math.inf
    best_val_loss: float = math.inf
    val_steps_since_improvement: int = 0
    collapse_count: int = 0
    warmup_blank_count: int = 0
    nonfinite_skipped: int = 0
    elapsed: float = 0.0                     # seconds of training before this process
    val_history: list[dict] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.time)  # this process's clock start

    def restart_clock(self) -> None:
        """Count this process's training time from now on."""
        self.started = time.time()

    def seconds(self) -> float:
        """Seconds of training of the run so far (earlier processes included)."""
        return self.elapsed + time.time() - self.started

    @classmethod
    def fresh(cls, n_batches: int, device: torch.device) -> "RunState":
        return cls(train_losses=torch.full((n_batches,), float("nan"), dtype=torch.float32,
                                           device=device))

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint form."""
        out = {key: getattr(self, name) for name, key in _KEYS.items()}
        out["elapsed"] = self.seconds()
        out["train_losses"] = self.train_losses[:self.next_batch].cpu().numpy()
        out["val_history"] = self.val_history
        return out

    def load_dict(self, d: Mapping[str, Any]) -> None:
        """Take the counters of a checkpoint's resume state (written by :meth:`to_dict`)."""
        defaults = RunState(train_losses=self.train_losses)
        for name, key in _KEYS.items():
            kind = type(getattr(defaults, name))
            setattr(self, name, kind(d.get(key, getattr(defaults, name))))
        self.val_history = list(d.get("val_history", []))
        losses = torch.as_tensor(np.asarray(d.get("train_losses", []), dtype=np.float32))
        n = min(len(losses), len(self.train_losses))
        self.train_losses[:n] = losses[:n].to(self.train_losses.device)

    def summary_value(self, name: str) -> float | None:
        """``best_val_per`` / ``best_val_loss`` as reported: None while never set."""
        v = getattr(self, name)
        return None if math.isinf(v) else v
