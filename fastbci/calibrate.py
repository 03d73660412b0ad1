"""``python -m fastbci.calibrate``: add a new recording day to a trained model from a few
sentences (docs/calibration.md).

    python -m fastbci.calibrate --checkpoint CKPT --session PATH/data_train.hdf5 [--sentences N]
        [--val PATH/data_val.hdf5] [--init-day DAY] [--unlabelled [--lm LM]] [--replace] --out DIR

Writes ``DIR/calibrated_checkpoint`` (the official format, the model with one more day layer,
fastbci's configuration with the session added and the calibration report) with ``args.yaml``
beside it, ``DIR/calibration.json`` (the report), and prints its one-line summary. Exit status
as every fastbci command: 0 done, 2 bad input (the message names the file), 5 ``--lm`` without
flashlight-text.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from fastbci import calibration as cal
from fastbci import checkpoint as ckpt_io
from fastbci import config as config_mod
from fastbci.errors import EXIT_OK, ConfigError, run_command
from fastbci.fileio import atomic_write_text, dumps

CHECKPOINT_NAME = "calibrated_checkpoint"
REPORT_NAME = "calibration.json"


def _split_rows(n: int, budget: cal.Budget, labelled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Train rows and held-out rows of ``n`` calibration trials: the last ``heldout_fraction``
    (at least 2) held out when there are ``min_heldout_sentences`` or more and labels."""
    rows = np.arange(n, dtype=np.int64)
    if not labelled or n < budget.min_heldout_sentences:
        return rows, rows[:0]
    n_held = max(2, int(round(budget.heldout_fraction * n)))
    return rows[:n - n_held], rows[n - n_held:]


def _eval_set(nd: cal.NewDay, val: Path | None, session: Path, held: np.ndarray, device):
    """Where PER is measured: ``(store, rows, description)``, or None without any labels."""
    if val is not None:
        store = cal.load_session(nd.cfg, val, nd.day, None, True, split="val")
        return store, np.arange(store.n_trials), f"--val {val} ({store.n_trials} trials)"
    if len(held):
        return nd.store, held, f"the held-out part of the calibration sentences ({len(held)} trials)"
    if not nd.labelled:
        try:  # the session's own labels, never used for training here
            store = cal.load_session(nd.cfg, session, nd.day, nd.store.n_trials, True)
        except Exception:  # noqa: BLE001 - an unlabelled file: no PER
            return None
        return store, np.arange(store.n_trials), ("the calibration trials' own labels (unused by "
                                                  "the unlabelled training)")
    if nd.store is not None:
        return nd.store, np.arange(nd.store.n_trials), (
            "the calibration sentences themselves (too few for a held-out part: pass --val)")
    return None


def _init_day(nd: cal.NewDay, init_day: int | None, builder, train_rows) -> tuple[int, str, dict]:
    """The day whose layer the new one starts from, how it was chosen, every candidate's score."""
    n_days = len(nd.cfg["dataset"]["sessions"])
    trained = range(n_days) if nd.replaced else range(n_days - 1)  # days with a trained layer
    candidates = [d for d in trained if d != nd.day] or [nd.day]
    if init_day is not None:
        if init_day not in trained:
            raise ConfigError(f"--init-day {init_day} is not a trained day of the model (0.."
                              f"{len(trained) - 1})")
        return init_day, "--init-day", {}
    if nd.store is None:  # no sentence: the most recent trained day
        return candidates[-1], "the model's most recent day (no calibration sentence)", {}
    best, scores = cal.choose_init_day(nd, train_rows, builder, candidates)
    how = "lowest CTC loss on the calibration sentences" if nd.labelled else \
        "most confident outputs on the calibration trials (no labels)"
    return best, how, scores


def _train(nd, builder, train_rows, held, args, budget, say) -> tuple[dict, list]:
    """The labelled training, or ``--unlabelled`` rounds of pseudo-labels."""
    if nd.store is None:
        return {"steps": 0, "heldout": [], "best_heldout_loss": None}, []
    if not args.unlabelled:
        return cal.train_layer(nd, nd.store, train_rows, held, builder, budget, args.seed,
                               say=say), []
    decode = _word_decoder(args) if args.lm else None
    rounds, steps = [], 0
    per_round = max(1, budget.steps // args.rounds)
    for r in range(args.rounds):
        kept, labels, conf = cal.pseudo_label(nd, builder, args.keep, decode)
        if not len(kept):
            rounds.append({"round": r + 1, "kept": 0, "steps": 0})
            break
        store = cal.with_labels(nd.store, labels)
        out = cal.train_layer(nd, store, kept, kept[:0], builder, budget, args.seed + r,
                              steps=per_round, say=say)
        steps += out["steps"]
        rounds.append({"round": r + 1, "kept": int(len(kept)), "of": int(nd.store.n_trials),
                       "mean_confidence_kept": float(conf[kept].mean()), "steps": out["steps"]})
        say(f"  round {r + 1}: trained on {len(kept)} of {nd.store.n_trials} pseudo-labelled trials")
    return {"steps": steps, "heldout": [], "best_heldout_loss": None}, rounds


def _word_decoder(args):
    """``log_probs -> phoneme ids`` through the word decoder and its lexicon (``--lm``)."""
    from fastbci.lm import Lexicon, WordDecoder
    lex = Lexicon.load(args.lexicon, use_cmudict=not args.no_cmudict)
    dec = WordDecoder(args.lm, lex)

    def decode(log_probs: np.ndarray) -> np.ndarray:
        text = dec.decode(log_probs)
        return np.asarray(lex.sentence_ids(text) if text.strip() else [], dtype=np.int64)
    return decode


def calibrate(args) -> dict:
    """The calibration of ``args`` (the parsed command line); returns the report."""
    from fastbci.evaluate import resolve_config
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    budget = cal.Budget(steps=args.steps, batch_size=args.batch_size)
    t0 = time.perf_counter()
    checkpoint, session = Path(args.checkpoint), Path(args.session)
    ck = ckpt_io.load(checkpoint, trust=args.trust_checkpoint)
    cfg, source = resolve_config(checkpoint, args.config, args.overrides, ck)
    nd, device = _load(cfg, ck, session, args)
    builder = cal.builder_for(nd.cfg, device, args.seed)
    n = 0 if nd.store is None else nd.store.n_trials
    train_rows, held = _split_rows(n, budget, nd.labelled)
    init, how, scores = _init_day(nd, args.init_day, builder, train_rows)
    cal.set_layer(nd.model, nd.day, cal.layer_of(nd.model, init))
    evaluation = _eval_set(nd, Path(args.val) if args.val else None, session, held, device)
    per_before = _per(nd, evaluation, builder)
    say(f"Calibrating {nd.session} as day {nd.day} from {n} sentence(s), starting from day {init} "
        f"({nd.cfg['dataset']['sessions'][init]}: {how})")
    (trained, rounds), seconds = cal.timed(lambda: _train(nd, builder, train_rows, held, args,
                                                           budget, say))
    after = _per(nd, evaluation, builder, full=True)
    sessions = nd.cfg["dataset"]["sessions"]
    report = {"session": nd.session, "day": nd.day, "checkpoint": str(checkpoint), "config": source,
              "init_day": init, "init_session": sessions[init], "init_choice": how,
              "init_scores": {sessions[d]: v for d, v in scores.items()},
              "n_sentences": n, "n_train": int(len(train_rows)), "n_heldout": int(len(held)),
              "unlabelled": bool(args.unlabelled), "rounds": rounds, "seed": args.seed,
              "steps": trained["steps"], "heldout": trained["heldout"],
              "budget": dataclasses.asdict(budget), "seconds": seconds,
              "seconds_with_loading": time.perf_counter() - t0,
              "per_before": per_before, "per_after": after[0], "loss_after": after[1],
              "eval_on": None if evaluation is None else evaluation[2]}
    _write(Path(args.out), nd, report)
    return report


def _load(cfg, ck, session: Path, args):
    from fastbci.devices import select_device
    nd = cal.new_day(cfg, ck["model_state_dict"], session, n=args.sentences, replace=args.replace,
                     labelled=not args.unlabelled)
    device = select_device(nd.cfg)
    nd.model.to(device)
    return nd, device


def _per(nd, evaluation, builder, full: bool = False):
    if evaluation is None:
        return (None, None) if full else None
    store, rows, _ = evaluation
    res = cal.evaluate_per(nd, store, rows, builder)
    return (res.per, res.loss) if full else res.per


def _write(out: Path, nd: cal.NewDay, report: dict) -> None:
    """``calibrated_checkpoint`` (weights only: official keys, the configuration with the new
    session, the report), ``args.yaml`` beside it and ``calibration.json``."""
    out.mkdir(parents=True, exist_ok=True)
    ck = ckpt_io.build_checkpoint(nd.model.official_state_dict(), None, None, report["per_after"],
                                  report["loss_after"], {"config": nd.cfg, "calibration": report})
    ckpt_io.atomic_save(ck, out / CHECKPOINT_NAME)
    config_mod.dump(nd.cfg, out / "args.yaml")
    atomic_write_text(out / REPORT_NAME, dumps(report, indent=1))


def summary_line(r: dict) -> str:
    """The report in one line."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"
    how = f"unlabelled, {len(r['rounds'])} round(s), kept " + \
        "/".join(str(x["kept"]) for x in r["rounds"]) if r["unlabelled"] else "labelled"
    return (f"calibrated {r['session']} as day {r['day']} from day {r['init_day']} "
            f"({r['init_session']}): {r['n_sentences']} sentences ({how}), {r['steps']} steps, "
            f"{r['seconds']:.1f} s; PER {pct(r['per_before'])} -> {pct(r['per_after'])}"
            + (f" on {r['eval_on']}" if r["eval_on"] else " (no labels to score)"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastbci.calibrate",
        description="Add a new recording day to a trained model: one more day layer, trained "
                    "alone (everything else frozen) on a few sentences of the new session, or "
                    "on pseudo-labels without labels. See docs/calibration.md.",
        epilog="Exit status: 0 done, 2 bad input (the message names the file), 5 --lm without "
               "flashlight-text.")
    p.add_argument("--checkpoint", required=True, help="a trained fastbci or official checkpoint")
    p.add_argument("--session", required=True, help="the new session's HDF5 file (data_train.hdf5)")
    p.add_argument("--out", required=True, help="folder for calibrated_checkpoint and calibration.json")
    p.add_argument("--sentences", type=int, default=None,
                   help="calibrate on the session's first N trials (default all; 0: no training, "
                        "the borrowed layer alone)")
    p.add_argument("--val", default=None,
                   help="labelled trials of the session to score PER on (data_val.hdf5); default "
                        "the held-out part of the sentences")
    p.add_argument("--init-day", type=int, default=None,
                   help="start from this day's layer (default: the lowest CTC loss on the sentences)")
    p.add_argument("--replace", action="store_true",
                   help="calibrate a session the model already has, replacing its layer")
    p.add_argument("--unlabelled", action="store_true",
                   help="adapt from pseudo-labels (the session's labels, if any, are not used)")
    p.add_argument("--rounds", type=int, default=3, help="pseudo-label rounds (default 3)")
    p.add_argument("--keep", type=float, default=0.5,
                   help="fraction of the most confident trials trained on per round (default 0.5)")
    p.add_argument("--lm", default=None, help="with --unlabelled: pseudo-label with the word decoder "
                                              "and this n-gram (ARPA or KenLM binary)")
    p.add_argument("--lexicon", default=None, help="extra pronunciations for --lm (WORD P1 P2 ...)")
    p.add_argument("--no-cmudict", action="store_true", help="--lm with --lexicon only")
    p.add_argument("--steps", type=int, default=cal.Budget.steps,
                   help=f"optimiser steps (default {cal.Budget.steps})")
    p.add_argument("--batch-size", type=int, default=cal.Budget.batch_size,
                   help=f"trials per step (default {cal.Budget.batch_size})")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same layer)")
    p.add_argument("--config", default=None, help="YAML config (default: the checkpoint's own)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint that needs full unpickling (it can run code)")
    p.add_argument("--quiet", action="store_true", help="only the summary line")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p


def _check(a) -> None:
    for name, lo in (("sentences", 0), ("steps", 0), ("batch_size", 1), ("rounds", 1), ("seed", 0)):
        v = getattr(a, name)
        if v is not None and v < lo:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {lo}, got {v}")
    if not 0 < a.keep <= 1:
        raise ConfigError(f"--keep must be in (0, 1], got {a.keep}")
    if a.lm and not a.unlabelled:
        raise ConfigError("--lm pseudo-labels: it needs --unlabelled")
    if a.sentences == 0 and not a.val:
        raise ConfigError("--sentences 0 (the borrowed layer alone) needs --val to score it")


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)

    def run() -> int:
        _check(a)
        if a.lm:
            from fastbci.lm.run import check_ready
            check_ready(a.lm)
        report = calibrate(a)
        print(summary_line(report))
        if not a.quiet:
            print(json.dumps({k: report[k] for k in ("init_day", "n_sentences", "steps", "seconds",
                                                     "per_before", "per_after")}), file=sys.stderr)
        return EXIT_OK

    return run_command(run, prog="fastbci.calibrate")


if __name__ == "__main__":
    sys.exit(main())
