"""``fastbci demo``: train a small decoder on synthetic data on the CPU and print its validation
PER and WER (the library: :mod:`fastbci.demo`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from fastbci.commands.options import add_json, report

HELP = "train a small decoder on built-in synthetic data (a few CPU minutes): PER and WER"
DESCRIPTION = ("Train a small decoder on synthetic data on the CPU and print its validation PER "
               "(and WER with flashlight-text). The data are written once (data/synth-demo); a rerun "
               "resumes an interrupted demo run and replaces a finished one.")
EPILOG = ("Exit status: 0 done, 2 bad input, 3 blank collapse, 4 non-finite, 130 interrupted "
          "(run the same command again to resume).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fastbci.demo import DEFAULT_DATA, DEFAULT_OUT
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"run directory (default {DEFAULT_OUT})")
    p.add_argument("--data", default=str(DEFAULT_DATA), help=f"demo data directory (default {DEFAULT_DATA})")
    add_json(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of configs/demo.yaml")


def run(a: argparse.Namespace) -> int:
    from fastbci import demo
    from fastbci.errors import exit_code_of
    res = demo.run(Path(a.out), Path(a.data), a.overrides)
    hist, lines = res.val_history, []
    summary = {"status": res.status, "last_batch": res.last_batch, "final_per": None,
               "best_per": res.best_val_per, "minutes": res.seconds / 60, "wer": None, "out": a.out}
    if res.status == "interrupted":
        lines.append(f"Demo interrupted after batch {res.last_batch}: run the same command again "
                     "to resume it")
    elif hist and hist[-1]["per"] is not None:
        summary["final_per"] = hist[-1]["per"]
        lines.append(f"Final validation PER: {100 * hist[-1]['per']:.1f}% "
                     f"(best {100 * res.best_val_per:.1f}%), {res.seconds / 60:.1f} min; "
                     f"run directory {a.out}")
        if (Path(a.out) / "checkpoint" / "best_checkpoint").is_file():
            w = demo.words_wer(Path(a.out), Path(a.data), quiet=True)
            if w is not None and w.get("wer") is not None:
                summary["wer"] = w["wer"]
                lines.append(f"Validation WER (best checkpoint, PER {100 * w['per']:.1f}%): "
                             f"{100 * w['wer']:.1f}% with a 3-gram of the synthetic train "
                             f"sentences; sentences in {w['files']['words_csv']}")
        advice = demo.ending_advice(hist, res.last_batch + 1, a.overrides)
        if advice and res.status == "finished":  # the collapse watch has said its own words
            lines.append(advice)
    else:
        lines.append(f"Training ended ({res.status}) without a validation PER")
    report(a, lines, summary)
    return exit_code_of(res.status)
