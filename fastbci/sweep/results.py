"""What a search writes and says: ``trials.csv``, ``best.yaml`` (the best trial's whole
configuration, which ``fastbci train`` runs as it is), ``importance.png`` and
``history.png`` (Optuna's parameter importances and history, drawn with matplotlib), the one-line
summary, and the progress of worker processes."""
from __future__ import annotations

import csv
import dataclasses
import io
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from fastbci import config as config_mod
from fastbci import fileio
from fastbci.sweep import plan, study as study_mod

TRIAL_COLUMNS = ("number", "state", "value", "status", "best_per", "final_per", "batches",
                 "seconds", "wall_seconds", "reason", "retry_of", "run_dir")


def fmt_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items())


@dataclasses.dataclass
class SearchResult:
    """What a search gave: the study (storage URL and name), trials by state, the best trial,
    the files written; ``complete``: as many trials done as asked."""
    out: Path
    storage: str
    study: str
    trials: int
    states: dict[str, int]
    best: dict[str, Any] | None
    files: dict[str, Path]
    complete: bool
    notes: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        """The one-line summary."""
        states = ", ".join(f"{n} {k.lower()}" for k, n in self.states.items() if n)
        best = (f"best PER {self.best['value']:.4f} (trial {self.best['number']}: "
                f"{fmt_params(self.best['params'])})" if self.best else "no complete trial")
        more = "" if self.complete else "; unfinished: run the same command again to continue"
        return (f"search {self.study}: {sum(self.states.values())} trial(s) for {self.trials} "
                f"asked ({states or 'none'}); {best}; outputs in {self.out}{more}")

    def summary(self) -> dict[str, Any]:
        """The JSON-able summary (``--json``)."""
        return {"out": str(self.out), "storage": study_mod.hide_password(self.storage),
                "study": self.study, "trials": self.trials, "states": self.states,
                "best": self.best, "complete": self.complete, "notes": self.notes,
                "files": {k: str(v) for k, v in self.files.items()}}


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def write_trials(path: Path, study, space: Sequence[str]) -> None:
    """One row per trial: number, state, value, the parameters, then fastbci's attributes."""
    buf = io.StringIO()
    cols = list(TRIAL_COLUMNS[:3]) + list(space) + list(TRIAL_COLUMNS[3:])
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name, "value": _cell(t.value)}
        row.update({k: _cell(t.params.get(k)) for k in space})
        row.update({k: _cell(t.user_attrs.get(k)) for k in TRIAL_COLUMNS[3:]})
        w.writerow(row)
    fileio.atomic_write_text(path, buf.getvalue())


def write_best(path: Path, out: Path, d: Mapping[str, Any], params: Mapping[str, Any]) -> None:
    """The best trial's whole configuration, to train as it is (``output_dir`` OUT/best)."""
    best = out / "best"
    cfg = plan.with_values(d["config"], {**params, "output_dir": str(best),
                                         "checkpoint_dir": str(best / "checkpoint")})
    config_mod.dump(cfg, path)


def _save(drawn, path: Path) -> Path:
    """Save what an Optuna matplotlib plot returned (its Axes) as a PNG."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    fig = drawn if isinstance(drawn, Figure) else drawn.figure
    fig.set_size_inches(8, 5)
    fig.tight_layout()
    fileio.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
    plt.close(fig)
    return path


def plots(study, out: Path, notes: list[str]) -> dict[str, Path]:
    """``history.png`` (any complete trial) and ``importance.png`` (two or more complete trials
    over a varying space); what could not be drawn is said in ``notes``."""
    import matplotlib
    matplotlib.use("Agg")
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as vis
    files = {}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        files["history"] = _save(vis.plot_optimization_history(study), out / "history.png")
    else:
        notes.append("no history.png: no complete trial")
    try:
        if len(complete) < 2:
            raise ValueError("fewer than 2 complete trials")
        files["importance"] = _save(vis.plot_param_importances(study), out / "importance.png")
    except (ValueError, RuntimeError) as e:
        notes.append(f"no importance.png: {e}")
    return files


def finish(study, out: Path, url: str, name: str, d: Mapping[str, Any],
           notes: list[str]) -> SearchResult:
    """The outputs of a search and its :class:`SearchResult`."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    files = {"trials": out / "trials.csv"}
    write_trials(files["trials"], study, list(d["space"]))
    best = None
    if states["COMPLETE"]:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": b.params,
                "run_dir": b.user_attrs.get("run_dir")}
        write_best(out / "best.yaml", out, d, b.params)
        files["best"] = out / "best.yaml"
    files.update(plots(study, out, notes))
    done = study_mod.tally(study)[0]
    return SearchResult(out, url, name, int(d["trials"]), {k: v for k, v in states.items() if v},
                        best, files, done >= int(d["trials"]), notes)


def follow(study, procs: Sequence, quiet: bool, logs: Path) -> list[str]:
    """Wait for the worker processes, printing each trial as it ends; what went wrong with a
    worker (its exit status and where its log is) in the returned notes."""
    import sys
    from optuna.trial import TrialState
    seen: set[int] = set()
    notes: list[str] = []

    def report() -> None:
        for t in study.get_trials(deepcopy=False):
            if t.number in seen or t.state in (TrialState.RUNNING, TrialState.WAITING):
                continue
            seen.add(t.number)
            if not quiet:
                value = "" if t.value is None else f", PER {t.value:.4f}"
                why = f" ({t.user_attrs['reason']})" if t.user_attrs.get("reason") else ""
                print(f"trial {t.number}: {t.state.name.lower()}{value}{why} "
                      f"[{fmt_params(t.params)}]", file=sys.stderr, flush=True)

    while any(p.poll() is None for p in procs):
        report()
        time.sleep(1.0)
    report()
    for i, p in enumerate(procs):
        if p.returncode != 0:
            notes.append(f"worker {i} exited with status {p.returncode} (log: "
                         f"{logs / f'worker-{i}.log'})")
    return notes
