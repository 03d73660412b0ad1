"""``fastbci sweep``: many training runs as one command (docs/sweeps.md).

    fastbci sweep ablate CONFIG [--against REF] --out DIR [--group NAME=k1,k2] [key=value ...]
    fastbci sweep seeds CONFIG --seeds N --out DIR [key=value ...]
    fastbci sweep search CONFIG --space SPACE.yaml --trials N --out DIR [--storage URL] [--workers N]
    fastbci sweep worker --storage URL --study NAME

Each run is an ordinary training run in its own folder under ``DIR/runs/``; the same command
again continues the sweep. The library is :mod:`fastbci.sweep`.
"""
from __future__ import annotations

import argparse
import shlex
from typing import Sequence

from fastbci.commands.options import (MAX_COUNT, SEED, add_json, add_overwrite, add_quiet,
                                      integer, number, report, say_to_stderr)

HELP = "many training runs as one command: ablations, seed sweeps, hyperparameter searches"
DESCRIPTION = __doc__.split("\n\n", 1)[1].rsplit("\n\n", 1)[0] if __doc__ else HELP
EPILOG = ("Exit status: 0 done (whatever the runs' own outcomes: see the CSV), 2 bad input "
          "(nothing started), 5 optuna missing (pip install 'fastbci[sweep]'), 130 interrupted "
          "or unfinished (the same command continues).")

SEEDS = integer("seeds per variant", 1, 10_000)
TRIALS = integer("trials", 1, MAX_COUNT)
WORKERS = integer("worker processes", 0, 1024)
SECONDS = integer("seconds", 1, 86_400)
BATCHES = integer("training batches", 0, None)


class _Intermixed(argparse.ArgumentParser):
    """CONFIG, its ``key=value`` overrides and the options in any order (``CONFIG --out DIR
    lr_max=0.002``)."""
    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def _seed_list(text: str) -> list[int]:
    try:
        out = [SEED(s.strip()) for s in text.split(",") if s.strip()]
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"--seed-list {text}: {e}") from None
    if not out:
        raise argparse.ArgumentTypeError("--seed-list: give seeds such as 3,7,11")
    return out


def _common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("config", metavar="CONFIG", help="the YAML configuration")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="overrides applied to every run (e.g. num_training_batches=2000)")
    if config and p.prog.split()[-1] in ("ablate", "seeds"):
        p.add_argument("--plateau-per", type=number("validation PER", 0, None, lo_open=True),
                       default=0.5, help="a run has learned (left the blank plateau) once its "
                                         "validation PER is below this (default 0.5)")
    add_json(p)
    add_quiet(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="subcommand", metavar="KIND", required=True, parser_class=_Intermixed)
    a = sub.add_parser("ablate", help="which differences from a reference decide the outcome")
    _common(a)
    a.add_argument("--against", metavar="REF", help="the reference (default: the official "
                                                    "configuration, configs/official.yaml)")
    a.add_argument("--out", required=True, metavar="DIR", help="the sweep's folder")
    a.add_argument("--group", action="append", default=[], metavar="NAME=k1,k2",
                   help="several keys as one factor (repeatable); a bare name is a known group: "
                        "augmentation = white_noise_std + constant_offset_std")
    a.add_argument("--keys", metavar="K1,K2", help="only these factors (keys or group names)")
    a.add_argument("--direction", choices=("fix", "break", "both"), default="both",
                   help="fix: CONFIG with one factor from REF; break: REF with one factor from "
                        "CONFIG (default both)")
    a.add_argument("--seeds", type=SEEDS, default=1, help="seeds per variant: seed and "
                                                          "dataset.seed = 1..N (default 1)")
    a.add_argument("--seed-list", type=_seed_list, help="these seeds instead, e.g. 3,7,11")
    add_overwrite(a, "an earlier ablation in DIR")
    s = sub.add_parser("seeds", help="one configuration over several seeds")
    _common(s)
    s.add_argument("--out", required=True, metavar="DIR", help="the sweep's folder")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--seeds", type=SEEDS, help="seed and dataset.seed = 1..N")
    g.add_argument("--seed-list", type=_seed_list, help="these seeds, e.g. 3,7,11")
    add_overwrite(s, "an earlier seed sweep in DIR")
    _search_arguments(sub.add_parser("search", help="a hyperparameter search with Optuna"))
    w = sub.add_parser("worker", help="one more worker process for a search's study (any "
                                      "machine that reaches its storage)")
    _common(w, config=False)
    w.add_argument("--storage", required=True, metavar="URL", help="the study's storage")
    w.add_argument("--study", required=True, metavar="NAME", help="the study's name")
    w.add_argument("--out", metavar="DIR", help="where this worker's run folders go (default: "
                                                "the search's folder)")
    w.add_argument("--threads", type=integer("torch threads", 1, 4096),
                   help="torch threads of this worker (default: torch's)")
    w.add_argument("--index", type=integer("worker index", 0, 1_000_000), default=0,
                   help="this worker's number: its sampler seed is the search's seed + index")
    _heartbeat_arguments(w)


def _heartbeat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heartbeat", type=SECONDS, default=20,
                   help="seconds between a running trial's heartbeats in a database storage "
                        "(default 20)")
    p.add_argument("--grace", type=SECONDS, help="seconds without a heartbeat after which a "
                                                 "trial is failed and retried once (default 3x "
                                                 "the heartbeat)")


def _search_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--space", required=True, metavar="SPACE.yaml",
                   help="keys to distributions: {low, high, log}, {low, high, int: true}, "
                        "{choices: [...]}")
    p.add_argument("--trials", type=TRIALS, required=True, help="trials in all (workers "
                                                                "together; a rerun continues)")
    p.add_argument("--out", required=True, metavar="DIR", help="the search's folder")
    p.add_argument("--storage", metavar="URL", help="sqlite:///PATH, postgresql://..., "
                                                    "mysql://..., journal:PATH (default: "
                                                    "sqlite:///DIR/study.db)")
    p.add_argument("--study", metavar="NAME", help="the study's name (default: DIR's name)")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                   help="Optuna's pruner (default median)")
    p.add_argument("--startup-trials", type=integer("trials", 0, MAX_COUNT), default=2,
                   help="median pruner: trials that are never pruned first (default 2)")
    p.add_argument("--prune-after", type=BATCHES, help="no pruning before this batch (default: "
                                                       "the end of the learning-rate warm-up)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=WORKERS, default=1, help="trials at once on this machine, "
                                                              "one process each (default 1; 0: "
                                                              "create the study, start none)")
    g.add_argument("--devices", metavar="0,1,...", help="one worker per GPU, each with its own "
                                                        "CUDA_VISIBLE_DEVICES")
    p.add_argument("--seed", type=SEED, help="the sampler's seed (worker i: seed + i)")
    p.add_argument("--enqueue", action="append", default=[], metavar="k=v[,k=v]",
                   help="values to try first (repeatable; when the study is created)")
    _heartbeat_arguments(p)


def _enqueued(texts: Sequence[str]) -> list[dict]:
    from fastbci.config import parse_override
    return [dict(parse_override(item) for item in text.split(",") if item.strip())
            for text in texts]


def _command(args: argparse.Namespace) -> str:
    """What reruns this sweep (an interrupted run names it)."""
    words = list(getattr(args, "_argv", []))[1:]  # fastbci.commands.main's argv, after "sweep"
    return "fastbci sweep " + " ".join(shlex.quote(w) for w in words) if words else \
        f"fastbci sweep {args.subcommand} ..."


def _print_result(args: argparse.Namespace, summary: dict, human: list[str]) -> None:
    report(args, human, summary)


def _ablation_like(args: argparse.Namespace, command: str) -> int:
    from fastbci import sweep
    from fastbci.errors import EXIT_INTERRUPTED, EXIT_OK
    if args.subcommand == "ablate":
        res = sweep.ablate(args.config, against=args.against, out=args.out,
                           overrides=args.overrides, groups=sweep.parse_groups(args.group),
                           keys=[k for k in (args.keys or "").split(",") if k.strip()] or None,
                           direction=args.direction, seeds=args.seeds, seed_list=args.seed_list,
                           overwrite=args.overwrite, quiet=args.quiet, command=command,
                           plateau_per=args.plateau_per)
    else:
        res = sweep.seed_sweep(args.config, out=args.out, seeds=args.seeds,
                               seed_list=args.seed_list, overrides=args.overrides,
                               overwrite=args.overwrite, quiet=args.quiet, command=command,
                               plateau_per=args.plateau_per)
    if res.interrupted:
        say_to_stderr(f"fastbci sweep: interrupted; run the same command again to continue: {command}")
        return EXIT_INTERRUPTED
    files = ", ".join(str(p) for p in res.files.values())
    _print_result(args, res.summary(), [f"Wrote {files}", *res.verdict])
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    from fastbci.errors import EXIT_INTERRUPTED, EXIT_OK
    command = _command(args)
    if args.subcommand in ("ablate", "seeds"):
        return _ablation_like(args, command)
    from fastbci import sweep
    if args.subcommand == "worker":
        n = sweep.worker(args.storage, args.study, out=args.out, threads=args.threads,
                         index=args.index, heartbeat=args.heartbeat, grace=args.grace,
                         quiet=args.quiet)
        _print_result(args, {"trials_run": n}, [f"worker ran {n} trial(s)"])
        return EXIT_OK
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    res = sweep.search(args.config, space=args.space, trials=args.trials, out=args.out,
                       storage=args.storage, study=args.study, pruner=args.pruner,
                       workers=args.workers, devices=devices, overrides=args.overrides,
                       seed=args.seed, enqueue=_enqueued(args.enqueue), heartbeat=args.heartbeat,
                       grace=args.grace, startup_trials=args.startup_trials,
                       prune_after=args.prune_after, quiet=args.quiet)
    _print_result(args, res.summary(), [*res.notes, res.line()])
    return EXIT_OK if res.complete or args.workers == 0 else EXIT_INTERRUPTED
