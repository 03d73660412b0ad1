"""The options several commands share, spelled once, and numbers checked against a range with
the words of the configuration keys' ranges (:mod:`fastbci.ranges`):

    fastbci calibrate: error: argument --steps: 10000000000000000000000 is out of range
    (allowed: 1 to 1000000; optimiser steps)

One concept, one spelling: ``--json`` prints the machine-readable summary on stdout (human
text goes to stderr); ``--overwrite`` lets a command replace outputs that fastbci wrote before
(never an input, never a file fastbci did not write); ``--nbest N`` is a count of hypotheses
and ``--nbest-file F`` an n-best CSV; ``--lexicon`` / ``--no-cmudict`` give pronunciations;
``--batch-size`` is a training batch and ``--eval-batch-size`` an evaluation batch.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Callable

from fastbci.ranges import Range


def _typed(kind: type, rng: Range, label: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'} "
                f"(allowed: {rng.allowed()}; {rng.meaning})") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number (allowed: "
                                             f"{rng.allowed()}; {rng.meaning})")
        if not rng.contains(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range (allowed: {rng.allowed()}; "
                                             f"{rng.meaning})")
        return value
    parse.__name__ = label  # argparse names the type in some messages
    return parse


def integer(meaning: str, lo: int | None = 1, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[lo, hi]`` (None: unbounded)."""
    return _typed(int, Range(lo, hi, meaning), "integer")


def number(meaning: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite float in the range (``lo_open``: ``lo`` excluded)."""
    return _typed(float, Range(lo, hi, meaning, lo_open=lo_open, hi_open=hi_open), "number")


#: the largest count a command accepts where nothing else bounds it (steps, rounds, trials)
MAX_COUNT = 10 ** 6
SEED = integer("random seed", 0, 2 ** 32 - 1)


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout, and nothing else there (the "
                        "human-readable lines go to stderr)")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress and no per-item report on "
                                                       "stderr (the summary stays)")


def add_overwrite(p: argparse.ArgumentParser, what: str = "outputs") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace {what} that fastbci wrote there before (never an input, never "
                        "a file fastbci did not write: those are always refused)")


def say_to_stderr(*lines: str) -> None:
    """Progress and diagnostics: stderr."""
    for line in lines:
        print(line, file=sys.stderr)


def report(a: argparse.Namespace, lines, obj: Any = None) -> None:
    """A command's result: the human-readable ``lines`` on stdout; with ``--json``, ``obj`` as
    JSON on stdout and the lines on stderr."""
    lines = [lines] if isinstance(lines, str) else list(lines)
    if getattr(a, "json", False):
        if obj is not None:
            print_json(obj)
        say_to_stderr(*lines)
    else:
        for line in lines:
            print(line)


def print_json(obj: Any) -> None:
    """The machine-readable summary on stdout (standard JSON: NaN and infinities as null)."""
    from fastbci.fileio import json_safe
    print(json.dumps(json_safe(obj), indent=1, default=str))
