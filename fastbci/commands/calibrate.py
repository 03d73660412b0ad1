"""``fastbci calibrate``: add a new recording day to a trained model from a few sentences (the
library: :func:`fastbci.calibration.calibrate`)."""
from __future__ import annotations

import argparse

from fastbci.commands.options import SEED, add_json, add_overwrite, add_quiet, integer, number
from fastbci.commands.options import report as show
from fastbci.commands.options import say_to_stderr
from fastbci.commands.words import add_lexicon

HELP = "add a new recording day to a trained model from a few sentences"
DESCRIPTION = ("Add a new recording day to a trained model: one more day layer, trained alone "
               "(everything else frozen) on a few sentences of the new session, or on "
               "pseudo-labels without labels. Writes OUT/calibrated_checkpoint, OUT/args.yaml and "
               "OUT/calibration.json. See docs/calibration.md.")
EPILOG = ("Exit status: 0 done, 2 bad input (the message names the file), 5 --lm without "
          "flashlight-text.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fastbci.calibration import Budget
    p.add_argument("--checkpoint", required=True, help="a trained fastbci or official checkpoint")
    p.add_argument("--session", required=True, help="the new session's HDF5 file (data_train.hdf5)")
    p.add_argument("--out", required=True, help="folder for calibrated_checkpoint and calibration.json")
    p.add_argument("--sentences", type=integer("calibration sentences", 0, None), default=None,
                   help="calibrate on the session's first N trials (default all; 0: no training, "
                        "the borrowed layer alone)")
    p.add_argument("--val", default=None,
                   help="labelled trials of the session to score PER on (data_val.hdf5); default "
                        "the held-out part of the sentences")
    p.add_argument("--init-day", type=integer("day index", 0, None), default=None,
                   help="start from this day's layer (default: the lowest CTC loss on the sentences)")
    p.add_argument("--replace", action="store_true",
                   help="calibrate a session the model already has, replacing its layer")
    p.add_argument("--unlabelled", action="store_true",
                   help="adapt from pseudo-labels (the session's labels, if any, are not used)")
    p.add_argument("--unlabelled-rest", action="store_true",
                   help="semi-supervised: the first --sentences N trials labelled, the file's "
                        "other trials adapted from pseudo-labels (their labels are not used), "
                        "weighted by confidence, the labelled sentences in every round")
    p.add_argument("--rounds", type=integer("pseudo-label rounds", 1, 100), default=3,
                   help="pseudo-label rounds (default 3)")
    p.add_argument("--keep", type=number("fraction of trials kept per round", 0, 1, lo_open=True),
                   default=0.5, help="fraction of the most confident trials trained on per round "
                                     "(default 0.5)")
    p.add_argument("--lm", default=None, help="with --unlabelled or --unlabelled-rest: pseudo-label "
                                              "with the word decoder and this n-gram (ARPA or "
                                              "KenLM binary)")
    add_lexicon(p)
    p.add_argument("--steps", type=integer("optimiser steps", 0, 10 ** 6), default=Budget.steps,
                   help=f"optimiser steps (default {Budget.steps})")
    p.add_argument("--batch-size", type=integer("trials per training step", 1, 10 ** 4),
                   default=Budget.batch_size,
                   help=f"training trials per step (default {Budget.batch_size})")
    p.add_argument("--pull-to-start", type=number("penalty weight on the change from the starting "
                                                  "layer", 0, None), default=0.0,
                   help="an L2 penalty of this weight on the change of the layer from where each "
                        "training starts (default 0: none)")
    p.add_argument("--update-rank", type=integer("rank of the change of the layer's weights", 1, None),
                   default=None, help="change the layer's weights by at most this rank (W0 + A B; "
                                      "default: a full change)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (the same seed gives the same layer)")
    p.add_argument("--config", default=None, help="YAML config (default: the checkpoint's own)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint that needs full unpickling (it can run code)")
    add_overwrite(p, "an earlier calibration in --out")
    add_quiet(p)
    add_json(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides")


def run(a: argparse.Namespace) -> int:
    from fastbci.calibration import calibrate
    result = calibrate(a.checkpoint, a.session, out=a.out, sentences=a.sentences, val=a.val,
                       init_day=a.init_day, replace=a.replace, unlabelled=a.unlabelled,
                       unlabelled_rest=a.unlabelled_rest, rounds=a.rounds, keep=a.keep, lm=a.lm,
                       lexicon=a.lexicon,
                       use_cmudict=not a.no_cmudict, cmudict=a.cmudict, steps=a.steps,
                       batch_size=a.batch_size, pull_to_start=a.pull_to_start,
                       update_rank=a.update_rank, seed=a.seed, config=a.config, overrides=a.overrides,
                       trust=a.trust_checkpoint, overwrite=a.overwrite,
                       say=(lambda s: None) if a.quiet else say_to_stderr)
    show(a, result.summary_line(), result.to_dict())
    return 0
