"""``fastbci evaluate``: a checkpoint (or an ensemble) on the val or test split: PER, transcripts,
logits and, with an n-gram LM, words, WER and the submission CSV (the library:
:func:`fastbci.evaluation.evaluate`)."""
from __future__ import annotations

import argparse

from fastbci.commands.options import (SEED, add_json, add_overwrite, add_quiet, integer, number, report,
                                      say_to_stderr)
from fastbci.commands.words import add_decoder, add_llm, add_nbest, decoder_kwargs, llm_options, nbest_of

HELP = "evaluate checkpoints: PER, transcripts, logits; words, WER and the submission CSV with --lm"
DESCRIPTION = ("Evaluate a fastbci or official checkpoint (or an ensemble of several): PER (val), "
               "greedy phoneme transcripts (CSV id,text) and logits (npz) for language-model "
               "decoding; with --lm also words, WER and a submission-format CSV, with --llm after "
               "rescoring the n-best with a causal LM.")
EPILOG = ("Exit status: 0 done, 2 bad input (configuration, data, checkpoint, output folder, disk), "
          "5 flashlight-text missing for --lm or transformers for --llm.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, action="append",
                   help="checkpoint file (e.g. .../checkpoint/best_checkpoint); repeat it for an "
                        "ensemble (the models' log-probabilities averaged per trial)")
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="val: score PER (and WER with --lm) against the labels; test: the "
                        "unlabelled split, transcripts only (the competition's submission)")
    p.add_argument("--official-eval", action="store_true",
                   help="the official evaluate_model.py semantics: one trial at a time, 'valid' "
                        "smoothing, bfloat16 autocast on CUDA (default: the trainer's validation)")
    p.add_argument("--config", default=None,
                   help="YAML config (default: the one the checkpoint carries, else args.yaml beside it)")
    p.add_argument("--out", default=None, help="output folder (default: CHECKPOINT_DIR/eval_SPLIT)")
    p.add_argument("--eval-batch-size", type=integer("trials per evaluation batch", 1, 10 ** 5),
                   default=None, help="evaluation batch size (default: the config's)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="also load a checkpoint that needs full unpickling: it can run code, use "
                        "only for files you trust (fastbci.trust_checkpoint=true says the same)")
    p.add_argument("--lm", default=None,
                   help="n-gram LM (ARPA or KenLM binary): also decode words, WER and words_SPLIT.csv")
    add_nbest(p, file_help="with --lm: write the decoder's n-best lists to this CSV (for "
                           "'fastbci lm rescore')")
    add_overwrite(p, "the files of an earlier evaluation in --out")
    add_quiet(p)
    add_json(p)
    add_adaptation(p)
    add_decoder(p)
    add_llm(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides")


def add_adaptation(p: argparse.ArgumentParser) -> None:
    """--adapt-day and the settings of the adaptation (each only with it)."""
    g = p.add_argument_group("test-time day adaptation (docs/calibration.md)")
    g.add_argument("--adapt-day", action="store_true",
                   help="before scoring, adapt each day's layer on the split's own trials of that "
                        "day from pseudo-labels, without reading their labels; the outputs are "
                        "the adapted model's, the PER without adaptation is reported beside")
    g.add_argument("--rounds", type=integer("pseudo-label rounds", 1, 100), default=None,
                   help="with --adapt-day: pseudo-label rounds per day (default 3)")
    g.add_argument("--keep", type=number("fraction of trials kept per round", 0, 1, lo_open=True),
                   default=None, help="with --adapt-day: fraction of a day's trials, the most "
                                      "confident, trained on per round (default 0.5)")
    g.add_argument("--steps", type=integer("optimiser steps", 1, 10 ** 6), default=None,
                   help="with --adapt-day: optimiser steps per day, over all rounds (default 120)")
    g.add_argument("--seed", type=SEED, default=None,
                   help="with --adapt-day: random seed (the same seed gives the same layers; "
                        "default 0)")


def _adapter(a: argparse.Namespace):
    """The day adaptation of --adapt-day and its settings (None without it)."""
    given = {k: v for k, v in (("rounds", a.rounds), ("keep", a.keep), ("steps", a.steps),
                               ("seed", a.seed)) if v is not None}
    if not a.adapt_day:
        if given:
            from fastbci.errors import ConfigError
            raise ConfigError(" ".join(f"--{k}" for k in given) + " set the test-time day "
                              "adaptation: pass --adapt-day too")
        return None
    from fastbci.calibration import DayAdaptation
    return DayAdaptation(**given)


def _word_options(a: argparse.Namespace) -> tuple[dict | None, dict | None]:
    """``decode_file`` keyword arguments and LLMScorer options of the parsed command line."""
    from fastbci.commands.words import rescore_params
    if not a.lm:
        return None, None
    opts = dict(decoder_kwargs(a), nbest=nbest_of(a), nbest_out=a.nbest_file)
    if not a.llm:
        return opts, None
    return dict(opts, rescore=rescore_params(a)), llm_options(a)


def _trust(a: argparse.Namespace) -> tuple[bool, list[str]]:
    """``--trust-checkpoint``, or the configuration key's spelling of it among the overrides
    (it decides how the checkpoint, which carries the configuration, is read)."""
    from fastbci.config import parse_override
    trust, rest = a.trust_checkpoint, []
    for o in a.overrides:
        if o.split("=", 1)[0].strip() == "fastbci.trust_checkpoint":
            trust = trust or parse_override(o)[1] is True
        else:
            rest.append(o)
    return trust, rest


def run(a: argparse.Namespace) -> int:
    from fastbci.evaluation import evaluate
    lm_options, llm_opts = _word_options(a)
    trust, overrides = _trust(a)
    s = evaluate(a.checkpoint, a.split, config=a.config, overrides=overrides, out_dir=a.out,
                 batch_size=a.eval_batch_size, quiet=a.quiet, lm=a.lm, lm_options=lm_options,
                 trust=trust, official=a.official_eval, llm=a.llm, llm_options=llm_opts,
                 overwrite=a.overwrite, adapt=_adapter(a),
                 say=None if not a.quiet else (lambda *x: None))
    if not a.quiet:
        say_to_stderr(*_details(s))
    report(a, _result(s), s)
    return 0


def _details(s: dict) -> list[str]:
    """The PER per day and per model, and the full summary line (stderr)."""
    n = s["n_trials"]
    what = "official per-trial" if s["semantics"] == "official" else "validation-style"
    without = (s.get("adaptation") or {}).get("per_by_day_without", {})
    lines = [f"  {d}: PER {100 * p:.2f}%" + (f" ({100 * without[d]:.2f}% without --adapt-day)"
                                              if without.get(d) is not None else "")
             if p is not None else f"  {d}: no phonemes" for d, p in s["per_by_day"].items()]
    lines += [f"  model {m['checkpoint']}: {what} PER "
              + (f"{100 * m['per']:.2f}%" if m["per"] is not None else "(no labels)")
              for m in s.get("models", [])]
    if s["per"] is None:
        return lines + [f"no phoneme labels in this split's files: no PER or loss over {n} trials"]
    extra = [f"loss {s['loss']:.4f}"] if s["loss"] is not None else []
    if s.get("per_validation") is not None:
        extra.append(f"validation-style PER {100 * s['per_validation']:.2f}%")
    extra.append(f"blank fraction {s['blank_fraction']:.3f}")
    ens = f", ensemble of {len(s['models'])} models" if "models" in s else ""
    return lines + [f"{s['split']} {what} PER {100 * s['per']:.2f}% ({', '.join(extra)}) over {n} "
                    f"trials{ens}"]


def _result(s: dict) -> list[str]:
    """The result lines (stdout): each model's PER, the PER (and without --adapt-day), the WER."""
    split = s["split"]
    lines = [f"{split} PER of {m['checkpoint']}: {100 * m['per']:.2f}%"
             for m in s.get("models", []) if m["per"] is not None]
    if s["per"] is not None:
        lines.append(f"{split} PER{' (ensemble)' if 'models' in s else ''}: {100 * s['per']:.2f}%")
    adapted = s.get("adaptation")
    if adapted is not None:
        days = sum(len(m["days"]) for m in adapted["models"])
        lines.append(f"{split} PER without --adapt-day: " + (
            f"{100 * adapted['per_without']:.2f}%" if adapted["per_without"] is not None else
            "n/a (no labels)") + f" ({days} day layer(s) adapted on the split's trials)")
    if s.get("wer") is not None:
        lines.append(f"{split} WER: {100 * s['wer']:.2f}%")
    return lines
