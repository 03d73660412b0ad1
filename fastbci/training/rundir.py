"""A run's home on disk: the output-folder policy (decided before anything is touched, carried
out once the data has loaded), the folders, the log file, ``args.yaml`` and ``run_status.json``."""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Mapping

from fastbci import checkpoint as ckpt_io
from fastbci import config as config_mod
from fastbci import fileio, outputs
from fastbci.errors import ConfigError
from fastbci.training import report

#: ``output_dir/run_status.json``: how the last ``fit`` of the run ended (status, last batch)
RUN_STATUS = "run_status.json"


# ---------------------------------------------------------------------------------------------
def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


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
        problem = fileio.path_problem(p)
        if problem is not None:
            raise ConfigError(f"fastbci.resume: checkpoint {p} {problem}")
        return p
    return None


#: what a start that failed before training leaves in an output folder (no checkpoint)
_LEFTOVERS = {"train.log", "args.yaml", "metrics.jsonl", "training_curves.png", "run_status.json"}


def _only_leftovers(files: list[Path], out: Path, ckdir: Path) -> bool:
    """True when ``files`` (fastbci's own, under the run's folders) are only what a start that
    failed before training leaves: its log, configuration and metrics, temporaries, no
    checkpoint."""
    for p in files:
        if p.name.startswith(".") and fileio.TMP_MARK in p.name:
            continue
        if p.parent.resolve() == ckdir.resolve() and p.name == "args.yaml":
            continue
        if p.parent.resolve() == out.resolve() and p.name in _LEFTOVERS:
            continue
        return False
    return True


def run_inputs(cfg: Mapping) -> list[tuple[str, object]]:
    """What a training run reads, which its output folders must never meet: the data folder
    and the checkpoint it starts from."""
    init = cfg["init_checkpoint_path"] if cfg["init_from_checkpoint"] else None
    return [("data folder (dataset.dataset_dir)", cfg["dataset"]["dataset_dir"]),
            ("checkpoint (init_checkpoint_path)", init)]


@dataclasses.dataclass
class OutputPlan:
    """What the output-directory policy decided, before anything is touched."""
    resume_from: Path | None
    delete: list[outputs.Plan]
    why: str = ""          # "overwrite" | "leftovers" | ""


def plan_output_dir(cfg: Mapping) -> OutputPlan:
    """The output-directory policy (:mod:`fastbci.outputs`), decided without side effects
    (:func:`apply_output_plan` carries it out once the data has loaded):

    * ``output_dir`` and ``checkpoint_dir`` never are, contain or lie inside the data folder or
      the checkpoint the run starts from, and never hold files that fastbci did not write (or
      that another kind of command wrote): refused, whatever the flags;
    * ``fastbci.resume`` true: the latest resumable checkpoint of ``output_dir`` (an error if
      there is none); a path: that checkpoint;
    * a folder that holds only what a start that failed before training left (its log and
      configuration, no checkpoint) is reused;
    * otherwise a folder holding an earlier run is an error that says how to proceed, unless
      ``fastbci.overwrite=true``, which deletes that run's files (and only them) first.
    """
    out, ckdir = Path(cfg["output_dir"]), Path(cfg["checkpoint_dir"])
    for key, d in (("output_dir", out), ("checkpoint_dir", ckdir)):
        if os.path.lexists(d) and not d.is_dir():  # a file, a broken link, a link loop
            problem = fileio.path_problem(d, "dir") or "is not a folder"
            raise ConfigError(f"{key} {d} {problem}: choose another {key}=DIR (or move it away)")
        why = outputs.meeting(d, run_inputs(cfg), folder=True)
        if why:
            raise outputs.OutputError(f"{key} {d}: {why}; a run there could destroy it (refused "
                                      f"even with fastbci.overwrite=true): choose another {key}")
    found = resume_path(cfg)
    if found is not None:
        return OutputPlan(found, [])
    command = outputs.writer()
    busy = [d for d in dict.fromkeys((out, ckdir)) if _is_nonempty_dir(d)]
    if not busy:
        return OutputPlan(None, [])
    plans = []
    for key, d in (("output_dir", out), ("checkpoint_dir", ckdir)):
        if d in busy and not any(d != b and b in d.parents for b in busy):
            h = outputs.holdings(d, command)
            outputs.refuse_foreign(d, h, command, key)
            plans.append(outputs.Plan(d, h.own))
    files = [f for pl in plans for f in pl.clear]
    if _only_leftovers(files, out, ckdir) and ckpt_io.find_resume_checkpoint(ckdir) is None:
        return OutputPlan(None, plans, "leftovers")
    if not cfg["fastbci"]["overwrite"]:
        has_resume = ckpt_io.find_resume_checkpoint(ckdir) is not None
        hint = "fastbci.resume=true to continue it, " if has_resume else ""
        raise ConfigError(
            f"output directory {busy[0]} already holds a run; pass {hint}"
            "fastbci.overwrite=true to replace it, or choose another output_dir=DIR "
            "(with checkpoint_dir=DIR/checkpoint)")
    return OutputPlan(None, plans, "overwrite")


def apply_output_plan(plan: OutputPlan) -> None:
    """Delete what the plan says (an overwritten run, or the leftovers of a failed start): the
    files fastbci recorded, nothing else."""
    for p in plan.delete:
        outputs.clear(p)


class RunDir:
    """The output folder of a run and what lives there. The policy is decided at construction
    (:func:`plan_output_dir`, no side effect; only the main process of a distributed run owns
    the folder); :meth:`create` carries it out and opens the log."""

    def __init__(self, cfg: Mapping, is_main: bool = True):
        self.output_dir = Path(cfg["output_dir"])
        self.checkpoint_dir = Path(cfg["checkpoint_dir"])
        self.is_main = is_main
        self.plan = plan_output_dir(cfg) if is_main else OutputPlan(resume_path(cfg), [])

    @property
    def resume_from(self) -> Path | None:
        return self.plan.resume_from

    def create(self, early: report.EarlyLog, console: bool) -> logging.Logger:
        """Delete what the plan says, make the folders, open ``train.log`` (and the console),
        remove temporaries of interrupted writes and replay the messages of the start; returns
        the run's logger (a silent one off the main process)."""
        if not self.is_main:
            return report.silent_logger()
        apply_output_plan(self.plan)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        log = report.make_logger(self.output_dir / "train.log", console=console)
        outputs.record(self.output_dir / "train.log")
        for d in (self.output_dir, self.checkpoint_dir):
            for t in fileio.remove_stale_temporaries(d):
                early.info(f"Removed {t}, left by an interrupted write")
        if self.plan.why == "leftovers":
            early.info(f"Reusing {self.output_dir}: it held only the files of a start that never "
                       "trained (no checkpoint)")
        early.replay(log)
        return log

    def write_config(self, cfg: Mapping, *, beside_checkpoints_only: bool = False) -> None:
        """``args.yaml`` beside the checkpoints (and in the output folder)."""
        if not self.is_main:
            return
        config_mod.dump(cfg, self.checkpoint_dir / "args.yaml")
        if not beside_checkpoints_only:
            config_mod.dump(cfg, self.output_dir / "args.yaml")

    def write_status(self, status: str, last_batch: int, n_batches: int,
                     best_val_per: float | None) -> None:
        """``run_status.json``: how the latest ``fit`` ended."""
        if self.is_main:
            fileio.atomic_write_text(self.output_dir / RUN_STATUS, fileio.dumps(
                {"status": status, "last_batch": last_batch, "num_training_batches": n_batches,
                 "best_val_PER": best_val_per}, indent=1))
