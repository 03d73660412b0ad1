"""``fastbci synth --out DIR``: write a synthetic Brain-to-Text '25 (t15) release (the library:
:func:`fastbci.synth.write_release`)."""
from __future__ import annotations

import argparse

from fastbci.commands.options import SEED, add_json, add_overwrite, integer, number, report

HELP = "write a synthetic t15 release (the official layout and format) and a config that trains on it"
DESCRIPTION = ("Write a synthetic Brain-to-Text '25 (t15) release: the official folder layout and "
               "HDF5 format, phoneme-driven features, and a synth_config.yaml that trains on it. "
               "Without a preset: the 45 official sessions with 20 train, 5 val and 5 test trials "
               "each (the four official train-only sessions get train trials only), 512 features. "
               "A preset sets sessions and counts; the options below override single values of it.")
EPILOG = "Exit status: 0 done (or the same release already there), 2 bad input or output folder."

_COUNT = integer("trials per session", 0, 10 ** 6)
_WORDS = integer("words per sentence", 1, 100)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (created)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--small", action="store_const", const="small", dest="preset",
                   help="3 sessions (one train-only) x 6 train / 2 val / 2 test trials, "
                        "neural_dim 32 (for tests)")
    g.add_argument("--demo", action="store_const", const="demo", dest="preset",
                   help="4 sessions x 200 train / 40 val trials, strong signal (CPU training demo)")
    g.add_argument("--release", action="store_const", const="release", dest="preset",
                   help="the release's 45 sessions and per-session trial counts (8,072 / 1,426 / "
                        "1,450 trials, ~13.5 GB at 512 features)")
    p.add_argument("--sessions", help="a number N (the first N official sessions) or comma-separated "
                                      "names (t15.YYYY.MM.DD, or plain names without / or ..)")
    p.add_argument("--n-train", type=_COUNT, help="train trials per session")
    p.add_argument("--n-val", type=_COUNT, help="val trials per session (none for train-only sessions)")
    p.add_argument("--n-test", type=_COUNT, help="test trials per session (none for train-only sessions)")
    p.add_argument("--neural-dim", type=integer("features per time step", 2, 4096),
                   help="features per time step, an even number (default 512)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.add_argument("--min-words", type=_WORDS, help="fewest words per sentence (default 2)")
    p.add_argument("--max-words", type=_WORDS, help="most words per sentence (default 6)")
    p.add_argument("--signal", type=number("template strength", 0, 100),
                   help="template strength (default 1, demo 3)")
    p.add_argument("--noise", type=number("latent noise standard deviation", 0, 100),
                   help="latent noise std (default 1, demo 0.6)")
    p.add_argument("--drift", type=number("per-session drift scale", 0, 100),
                   help="per-session drift scale (default 1)")
    p.add_argument("--holdout", type=integer("held-out sessions", 0, None), default=0,
                   help="the last K sessions are written but left out of synth_config.yaml and the "
                        "train corpus: new days to try 'fastbci calibrate' on (default 0)")
    add_overwrite(p, "a release that synth wrote in --out with other parameters")
    add_json(p)


def run(a: argparse.Namespace) -> int:
    from fastbci.synth import PRESETS, format_summary, write_release
    kw = dict(PRESETS[a.preset]) if a.preset else {}
    if a.sessions:
        kw["sessions"] = (int(a.sessions) if a.sessions.strip().isdigit()
                          else [s.strip() for s in a.sessions.split(",") if s.strip()])
    for name in ("n_train", "n_val", "n_test", "neural_dim", "min_words", "max_words", "signal",
                 "noise", "drift"):
        v = getattr(a, name)
        if v is not None:
            kw[name] = v
    summary = write_release(a.out, seed=a.seed, progress=not a.json, holdout=a.holdout,
                            overwrite=a.overwrite, **kw)
    report(a, format_summary(summary), summary)
    return 0
