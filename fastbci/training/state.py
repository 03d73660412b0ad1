"""The run's state and its home on disk: :class:`RunState` (every counter of a run, once, with
its checkpoint form) and the output-directory and resume policy."""
from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from fastbci import checkpoint as ckpt_io
from fastbci.config import ConfigError

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

    @classmethod
    def fresh(cls, n_batches: int, device: torch.device) -> "RunState":
        return cls(train_losses=torch.full((n_batches,), float("nan"), dtype=torch.float32,
                                           device=device))

    def to_dict(self, elapsed_now: float) -> dict[str, Any]:
        """The checkpoint form (``elapsed_now``: seconds run by this process so far)."""
        out = {key: getattr(self, name) for name, key in _KEYS.items()}
        out["elapsed"] = self.elapsed + elapsed_now
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


# ---------------------------------------------------------------------------------------------
# output directory and resume
# ---------------------------------------------------------------------------------------------
def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def _dangerous_to_delete(p: Path) -> bool:
    p = p.resolve()
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    return p == Path(p.anchor) or p == home or p == cwd or p in cwd.parents


def resume_path(cfg: Mapping) -> Path | None:
    """The checkpoint ``fastbci.resume`` asks for (None when not resuming); no side effect."""
    out = Path(cfg["output_dir"])
    ckdir = Path(cfg["checkpoint_dir"])
    resume = cfg["fastbci"]["resume"]
    if isinstance(resume, str) and resume.strip().lower() in ("", "false", "no", "none"):
        resume = False
    if isinstance(resume, str) and resume.strip().lower() in ("true", "yes", "latest"):
        resume = True
    if resume is True:
        found = ckpt_io.find_resume_checkpoint(ckdir)
        if found is None:
            raise ConfigError(
                f"fastbci.resume=true but there is no resumable checkpoint in {out} "
                f"(looked for {ckdir / ckpt_io.RESUME_NAME}); start a new run without "
                "fastbci.resume, or give the checkpoint path: fastbci.resume=PATH")
        return found
    if isinstance(resume, str):
        p = Path(resume)
        if not p.is_file():
            raise ConfigError(f"fastbci.resume: checkpoint file not found: {p}")
        return p
    return None


#: what a start that failed before training leaves in an output folder (no checkpoint)
_LEFTOVERS = {"train.log", "args.yaml", "metrics.jsonl", "training_curves.png", "run_status.json"}


def _only_leftovers(folder: Path, ckdir: Path) -> bool:
    """True when ``folder`` holds nothing but what a failed start leaves: fastbci's own log,
    configuration and metrics files, temporaries, and no checkpoint."""
    for p in folder.rglob("*"):
        if p.is_dir():
            continue
        rel = p.relative_to(folder)
        in_ck = p.parent.resolve() == ckdir.resolve()
        if p.name.startswith(".") and ".tmp" in p.name:
            continue
        if in_ck and p.name == "args.yaml":
            continue
        if len(rel.parts) == 1 and p.name in _LEFTOVERS:
            continue
        return False
    return True


@dataclasses.dataclass
class OutputPlan:
    """What the output-directory policy decided, before anything is touched."""
    resume_from: Path | None
    delete: list[Path]
    why: str = ""          # "overwrite" | "leftovers" | ""


def plan_output_dir(cfg: Mapping) -> OutputPlan:
    """The output-directory policy, decided without side effects (:func:`apply_output_plan`
    carries it out once the data has loaded):

    * ``fastbci.resume`` true: the latest resumable checkpoint of ``output_dir`` (an error if
      there is none); a path: that checkpoint;
    * a folder that holds only what a start that failed before training left (its log and
      configuration, no checkpoint) is reused;
    * otherwise an existing non-empty ``output_dir`` (or ``checkpoint_dir``) is an error that
      says how to proceed, unless ``fastbci.overwrite=true``, which deletes it first.
    """
    out, ckdir = Path(cfg["output_dir"]), Path(cfg["checkpoint_dir"])
    for key, d in (("output_dir", out), ("checkpoint_dir", ckdir)):
        if d.exists() and not d.is_dir():
            raise ConfigError(f"{key} {d} exists and is a file, not a folder: choose another "
                              f"{key}=DIR (or move the file away)")
    found = resume_path(cfg)
    if found is not None:
        return OutputPlan(found, [])
    busy = [d for d in (out, ckdir) if _is_nonempty_dir(d)]
    if not busy:
        return OutputPlan(None, [])
    if all(_only_leftovers(d, ckdir) for d in busy) and ckpt_io.find_resume_checkpoint(ckdir) is None:
        return OutputPlan(None, busy, "leftovers")
    if not cfg["fastbci"]["overwrite"]:
        has_resume = ckpt_io.find_resume_checkpoint(ckdir) is not None
        hint = "fastbci.resume=true to continue it, " if has_resume else ""
        raise ConfigError(
            f"output directory {busy[0]} already exists and is not empty; pass {hint}"
            "fastbci.overwrite=true to replace it, or choose another output_dir=DIR "
            "(with checkpoint_dir=DIR/checkpoint)")
    for d in busy:
        if _dangerous_to_delete(d):
            raise ConfigError(f"fastbci.overwrite=true would delete {d.resolve()}, which is "
                              "the file-system root, your home, the working directory or "
                              "one of its parents: choose another output_dir")
    return OutputPlan(None, busy, "overwrite")


def apply_output_plan(plan: OutputPlan) -> None:
    """Delete what the plan says (an overwritten run, or the leftovers of a failed start)."""
    for d in plan.delete:
        if d.exists():  # checkpoint_dir may sit inside output_dir, already removed
            shutil.rmtree(d)
