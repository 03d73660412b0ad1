"""What an ablation or a seed sweep writes: the CSV (one row per run), the Markdown table (one
row per variant, over its seeds), the validation PER curves, and the verdict in plain words."""
from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from fastbci import fileio
from fastbci.sweep.plan import Factor, Variant, find
from fastbci.sweep.runner import PLATEAU_PER, RunResult

CSV_COLUMNS = ("variant", "factor", "direction", "keys", "values", "seed", "status", "final_per",
               "best_per", "left_plateau_batch", "seconds")


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _values_text(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """One row per run, :data:`CSV_COLUMNS`."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
    fileio.atomic_write_text(path, buf.getvalue())


def run_row(v: Variant, facs: Sequence[Factor], values: Mapping[str, Any], seed: int,
            res: RunResult) -> dict:
    """A CSV row of run ``res`` of variant ``v``."""
    keys = [k for f in facs if f.name == v.factor for k in f.keys]
    return {"variant": v.name, "factor": v.factor, "direction": v.direction,
            "keys": " ".join(keys), "values": _values_text(values), "seed": seed,
            "status": res.status, "final_per": _num(res.final_per), "best_per": _num(res.best_per),
            "left_plateau_batch": "" if res.left_plateau_batch is None else res.left_plateau_batch,
            "seconds": _num(res.seconds, ".1f")}


def outcome(results: Sequence[RunResult]) -> str:
    """``learned`` (every seed left the plateau), ``collapsed`` (none did, or the collapse
    watch stopped it), ``mixed``, or ``failed`` when a run has no result."""
    if not results or any(r.status in ("failed", "interrupted") for r in results):
        return "failed"
    n = sum(r.learned for r in results)
    return "learned" if n == len(results) else "collapsed" if n == 0 else "mixed"


#: an outcome in words (collapse: a run that never left the plateau, or that the watch stopped)
_OUTCOME_WORDS = {"learned": "learned (left the blank plateau)",
                  "collapsed": "did not learn (never left the blank plateau, or collapsed)",
                  "mixed": "learned on some seeds only", "failed": "has failed or unfinished runs",
                  "not run": "was not run"}


def _stats(vals: Sequence[float]) -> tuple[str, str, str, str]:
    if not vals:
        return "", "", "", ""
    pct = [100 * v for v in vals]
    return (f"{statistics.fmean(pct):.1f}%", f"{min(pct):.1f}%", f"{statistics.median(pct):.1f}%",
            f"{max(pct):.1f}%")


def markdown(variants: Sequence[Variant], results: Mapping[str, Sequence[RunResult]],
             values: Mapping[str, Mapping[str, Any]], title: str,
             plateau_per: float = PLATEAU_PER) -> str:
    """One row per variant: its values, final PER over the seeds (mean, min, median, max), how
    many seeds collapsed (stopped by the watch) or never left the plateau, training seconds."""
    lines = [f"# {title}", "",
             "| variant | values | seeds | final PER mean | min | median | max | collapsed | "
             "never left plateau | mean seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in variants:
        rs = results.get(v.name, [])
        finals = [r.final_per for r in rs if r.final_per is not None]
        mean, lo, med, hi = _stats(finals)
        secs = [r.seconds for r in rs if r.seconds is not None]
        lines.append(
            f"| {v.name} | {_values_text(values.get(v.name, {})) or '(as CONFIG)'} | {len(rs)} | "
            f"{mean} | {lo} | {med} | {hi} | {sum(r.status == 'collapsed' for r in rs)} | "
            f"{sum(r.left_plateau_batch is None for r in rs)} | "
            f"{_num(statistics.fmean(secs), '.0f') if secs else ''} |")
    lines += ["", f"A run has left the blank plateau at its first validation with PER < "
              f"{plateau_per:g}; `collapsed` counts the runs the collapse watch stopped.", ""]
    return "\n".join(lines)


def _words(f: Factor, which: str) -> str:
    vals = f.config_values if which == "config" else f.ref_values
    return ", ".join(f"{k} = {v}" for k, v in zip(f.keys, vals))


def verdict(facs: Sequence[Factor], variants: Sequence[Variant],
            results: Mapping[str, Sequence[RunResult]]) -> list[str]:
    """Plain sentences: how CONFIG and REF did, which factors alone turn learning into collapse
    (break: REF with that factor from CONFIG) and which alone turn collapse into learning (fix:
    CONFIG with that factor from REF)."""
    def out_of(carried: frozenset[str]) -> str:
        v = find(variants, carried)
        return outcome(results.get(v.name, [])) if v else "not run"

    every = frozenset(f.name for f in facs)
    cfg_o, ref_o = out_of(every), out_of(frozenset())
    n = len(results.get("config", []))
    lines = [f"CONFIG {_OUTCOME_WORDS.get(cfg_o, cfg_o)}; REF {_OUTCOME_WORDS.get(ref_o, ref_o)} "
             f"(over {n} seed(s))."]
    breaks, fixes, notes = [], [], []
    for f in facs:
        b = out_of(frozenset({f.name}))
        x = out_of(every - {f.name})
        if ref_o == "learned" and b == "collapsed":
            breaks.append(f"{f.name} ({_words(f, 'config')})")
        if cfg_o == "collapsed" and x == "learned":
            fixes.append(f"{f.name} ({_words(f, 'ref')})")
        if "mixed" in (b, x):
            notes.append(f"{f.name} gives mixed results over the seeds")
    if cfg_o == ref_o == "learned":
        lines.append("Both learn: there is no collapse to explain in this budget.")
    if cfg_o == ref_o == "collapsed":
        lines.append("Neither learns in this budget: there is no difference to explain; give "
                     "the runs more batches (num_training_batches=...) or other seeds.")
    if breaks:
        lines.append("Alone, these turn learning into collapse (REF with CONFIG's value): "
                     + "; ".join(breaks) + ".")
    elif ref_o == "learned" and cfg_o != "learned" and any(v.direction == "break" for v in variants):
        lines.append("No factor alone turns REF's learning into collapse: it takes several "
                     "together.")
    if fixes:
        lines.append("Alone, these turn collapse into learning (CONFIG with REF's value): "
                     + "; ".join(fixes) + ".")
    elif cfg_o == "collapsed" and ref_o == "learned" and any(v.direction == "fix" for v in variants):
        lines.append("No factor alone turns CONFIG's collapse into learning: restore several "
                     "together.")
    if "failed" in (cfg_o, ref_o) or any(out_of(v.carried) == "failed" for v in variants):
        lines.append("Some runs failed or were interrupted: see the status column of the CSV; "
                     "run the same command again to retry them.")
    return lines + [n + "." for n in notes]


def plot(path: Path, variants: Sequence[Variant], results: Mapping[str, Sequence[RunResult]],
         title: str, plateau_per: float = PLATEAU_PER) -> Path | None:
    """The validation PER curves of every run, one colour per variant (None: nothing to draw)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not any(r.curve for rs in results.values() for r in rs):
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab10")
    for i, v in enumerate(variants):
        for j, r in enumerate(results.get(v.name, [])):
            if r.curve:
                b, p = zip(*r.curve)
                ax.plot(b, [100 * x for x in p], color=colours(i % 10), alpha=0.85,
                        marker="." if len(b) < 30 else None,
                        linestyle="--" if r.status == "collapsed" else "-",
                        label=v.name if j == 0 else None)
    ax.axhline(100 * plateau_per, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("training batch")
    ax.set_ylabel("validation PER (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fileio.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
    plt.close(fig)
    return path
