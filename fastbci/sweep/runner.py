"""One training run of a sweep in its own folder, and what it gave: an ordinary fastbci run
(:class:`fastbci.training.Trainer`, every file a run writes), resumed when a sweep is run again,
skipped once it has ended; its result is read back from its own files. Also the one check of a
sweep's output folder (:func:`check_out`)."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Mapping

from fastbci import checkpoint as ckpt_io
from fastbci import fileio
from fastbci import outputs as fastbci_outputs
from fastbci.errors import ConfigError

#: a validation PER below this: the run has left the blank plateau CTC training starts on
PLATEAU_PER = 0.5
#: run statuses after which a sweep does not run the folder again
FINAL = ("finished", "early_stopped", "collapsed", "nonfinite", "pruned")
#: the file that marks a folder as a fastbci sweep of some kind
MARKER = "sweep.json"
RUN_STATUS = "run_status.json"  # fastbci.training.rundir.RUN_STATUS, read here as a file


@dataclasses.dataclass
class RunResult:
    """What one run of a sweep gave (read from its folder). ``status``: the trainer's final
    status, or ``failed`` (an error, in ``message``) or ``interrupted``."""
    folder: Path
    status: str
    final_per: float | None = None
    best_per: float | None = None
    left_plateau_batch: int | None = None
    last_batch: int | None = None
    seconds: float | None = None
    curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    message: str = ""
    ran: bool = False  # trained in this call (False: an ended run read back)

    @property
    def batches(self) -> int:
        """Training batches the run did (0 before any)."""
        return 0 if self.last_batch is None else self.last_batch + 1

    @property
    def learned(self) -> bool:
        """Left the blank plateau and was not stopped as collapsed."""
        return self.left_plateau_batch is not None and self.status != "collapsed"


def _status(folder: Path) -> dict:
    try:
        return json.loads((folder / RUN_STATUS).read_text())
    except (OSError, ValueError):
        return {}


def val_records(folder: Path) -> list[dict]:
    """The validation records of ``metrics.jsonl``, one per batch (the last written wins: a
    resumed run may repeat a batch)."""
    by_batch: dict[int, dict] = {}
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if r.get("split") == "val" and r.get("per") is not None:
            by_batch[int(r["batch"])] = r
    return [by_batch[b] for b in sorted(by_batch)]


def read_result(folder: Path, status: str | None = None, message: str = "",
                plateau_per: float = PLATEAU_PER) -> RunResult:
    """The result of the run in ``folder`` from its ``run_status.json`` and ``metrics.jsonl``
    (``plateau_per``: the PER below which the run has left the blank plateau)."""
    st = _status(folder)
    vals = val_records(folder)
    curve = [(int(r["batch"]), float(r["per"])) for r in vals]
    left = next((b for b, p in curve if p < plateau_per), None)
    best = st.get("best_val_PER")
    if best is None and curve:
        best = min(p for _, p in curve)
    return RunResult(folder=folder, status=status or st.get("status", "failed"),
                     final_per=curve[-1][1] if curve else None, best_per=best,
                     left_plateau_batch=left, last_batch=st.get("last_batch"),
                     seconds=max((float(r.get("seconds", 0.0)) for r in vals), default=None),
                     curve=curve, message=message)


def ended(folder: Path) -> bool:
    """The run in ``folder`` has ended (a final status): a sweep skips it."""
    return _status(folder).get("status") in FINAL


def prepare(cfg: Mapping) -> dict:
    """``cfg`` set to resume the unfinished run of its folder (a resumable checkpoint), or to
    start afresh there (replacing what a failed start left; the folder is the sweep's own)."""
    out = dict(cfg)
    fb = dict(out["fastbci"])
    ckdir = Path(out["checkpoint_dir"])
    if ckpt_io.find_resume_checkpoint(ckdir) is not None:
        fb.update(resume=True, overwrite=False)
    else:
        fb.update(resume=False, overwrite=True)
    out["fastbci"] = fb
    return out


def train(cfg: Mapping, *, on_validation: Callable[[int, dict], str | None] | None = None,
          console: bool = False, resume_command: str | None = None,
          plateau_per: float = PLATEAU_PER) -> RunResult:
    """Train ``cfg`` in its ``output_dir`` (resuming it when it has a resumable checkpoint),
    unless that run has ended already; the result read from the folder. A training error is a
    ``failed`` result with its message; Ctrl-C stops the run with a resumable checkpoint and
    returns ``interrupted``."""
    from fastbci.training import Trainer
    folder = Path(cfg["output_dir"])
    if ended(folder):
        return read_result(folder, plateau_per=plateau_per)
    t0 = time.time()
    try:
        summary = Trainer(prepare(cfg), console=console, resume_command=resume_command,
                          on_validation=on_validation).fit()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # one run's error is its row, not the sweep's end
        res = read_result(folder, "failed", f"{type(e).__name__}: {e}", plateau_per)
        res.ran = True
        return res
    res = read_result(folder, summary.status, summary.message, plateau_per)
    if res.seconds is None:
        res.seconds = time.time() - t0
    res.ran = True
    return res


def check_out(out: Path, kind: str, signature: str | None = None, overwrite: bool = False,
              outputs: tuple[str, ...] = ()) -> None:
    """The one check of a sweep's output folder ``out`` before anything starts (fastbci's
    output rule, :mod:`fastbci.outputs`): missing or empty, or a fastbci sweep of this ``kind``
    (made for the same ``signature`` when one is given: the same sweep, continued).
    ``overwrite`` replaces an earlier sweep of this kind (only the files fastbci recorded
    there); a folder holding a file fastbci did not write is always refused."""
    plan = fastbci_outputs.check_dir(out, overwrite=True, option="--out", command="sweep")
    if not plan.clear:  # new or empty
        return
    try:
        mark = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        raise ConfigError(f"--out {out} holds fastbci's training runs but no sweep ({MARKER} is "
                          "missing): choose another --out") from None
    if mark.get("kind") != kind:
        raise ConfigError(f"--out {out} holds a fastbci sweep of another kind "
                          f"({mark.get('kind')}, not {kind}): choose another --out")
    if signature is None or mark.get("signature") == signature:
        return
    if not overwrite:
        raise ConfigError(f"--out {out} holds another {kind} (another configuration, reference, "
                          "overrides, factors or seeds): choose another --out, or pass "
                          "--overwrite to replace it")
    fastbci_outputs.clear(plan)


def mark(out: Path, kind: str, signature: str | None = None, **info) -> None:
    """Create ``out`` and write its marker (what kind of sweep, for what)."""
    out.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_text(out / MARKER, fileio.dumps(
        {"kind": kind, "signature": signature, **info}, indent=1))
