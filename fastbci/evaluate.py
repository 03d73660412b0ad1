"""Evaluate a checkpoint: ``python -m fastbci.evaluate --checkpoint PATH --split val|test``.

Loads a fastbci or an official checkpoint (a dict with ``model_state_dict``; ``_orig_mod.`` and
``module.`` prefixes are stripped), runs the model on every trial of the split (smoothing only,
as the trainer's validation, batched by day in file order; with ``--official-eval`` one trial at
a time as the official ``evaluate_model.py``, :mod:`fastbci.official_eval`) and writes to the
output directory:

* ``transcripts_{split}.csv``: ``id,text``, one row per trial, ids 0..N-1 in (session, block,
  trial) order, text = the greedy phoneme transcript (symbols separated by spaces, silence
  written ``|``);
* ``logits_{split}.npz``: the per-frame logits for external language-model decoding, packed:
  ``logits`` (sum of lengths, n_classes) float32; trial ``i`` (same order and id as the CSV) is
  ``logits[offsets[i]:offsets[i + 1]]``; also ``lengths``, ``ids``, ``tokens`` / ``n_tokens``
  (the greedy decoding, padded with -1), ``session``, ``day``, ``block_num``, ``trial_num``,
  ``row`` (TrialStore row) and, for val, ``sentence_label``;
* ``per_{split}.json`` (val only): PER overall and per day, CTC loss, blank fraction;
* with ``--lm LM`` (an ARPA file or KenLM binary): ``words_{split}.csv``, ``id,text`` with the
  sentences of :mod:`fastbci.lm`'s lexicon beam search (the submission format for the test
  split), and for val the WER overall and per day (also in the JSON); with ``--llm MODEL`` the
  decoder's n-best lists are rescored by that causal LM first (:mod:`fastbci.lm.rescore`).

Several ``--checkpoint`` make an ensemble (:mod:`fastbci.ensemble`): the per-trial
log-probabilities of the models are averaged, and the files above hold the ensemble's; the
summary gives each model's PER too.

The configuration is, in order of preference: ``--config``, the configuration a fastbci
checkpoint carries (what it was trained with), or the ``args.yaml`` beside the checkpoint
(official layout); ``key=value`` overrides apply on top (e.g.
``dataset.dataset_dir=/data/hdf5_data_final``); the one used is printed and recorded.
Exit status (as every fastbci command, :mod:`fastbci.errors`): 0 done, 2 bad input (message
names the file / key), 5 ``--lm`` without flashlight-text or ``--llm`` without transformers.

The training-side APIs (data store, batch plan, batch builder, device choice, model, validation
loop) are used in :func:`run_split` only.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fastbci import checkpoint as ckpt_io
from fastbci import config as config_mod
from fastbci import ensemble, official_eval
from fastbci.config import ConfigError
from fastbci.ensemble import SplitRun
from fastbci.fileio import atomic_write_text, dumps


def resolve_config(checkpoint: Path, config: str | None, overrides: Sequence[str],
                   ck: dict) -> tuple[dict, str]:
    """The evaluation configuration and where it came from: ``--config``, else the one a
    fastbci checkpoint carries (what the model was trained with), else the ``args.yaml``
    beside the checkpoint (the official layout). An empty args.yaml is never read as "the
    defaults"."""
    if config is not None:
        return config_mod.load_config(config, overrides), str(config)
    embedded = (ck.get("fastbci") or {}).get("config")
    if isinstance(embedded, dict):
        where = f"the configuration stored in {checkpoint}"
        return config_mod.from_mapping(embedded, overrides, where=where), where
    beside = checkpoint.parent / "args.yaml"
    if beside.is_file():
        if config_mod.read_yaml(beside):
            return config_mod.load_config(beside, overrides), str(beside)
        raise ConfigError(f"{beside} is empty and {checkpoint} carries no configuration: pass "
                          "--config CFG (the configuration the model was trained with)")
    raise ConfigError(f"no configuration for {checkpoint}: pass --config CFG (there is no args.yaml "
                      "beside the checkpoint and it carries no fastbci configuration)")


def run_split(checkpoint: Path, split: str, *, config: str | None = None, overrides: Sequence[str] = (),
              batch_size: int | None = None, trust: bool = False, official: bool = False,
              progress: bool = True, stores: dict | None = None) -> SplitRun:
    """Load ``checkpoint`` and run it on ``split``: the per-trial outputs and the PER. The one
    place that uses the training-side APIs. ``official``: the official per-trial semantics
    (the validation-style PER is kept as ``per_validation``); ``stores``: split stores already
    loaded, reused when the data configuration is the same (an ensemble)."""
    from fastbci import data
    from fastbci.data.batch import BatchBuilder
    from fastbci.devices import select_device
    from fastbci.model import GRUDecoder
    from fastbci.reference import gaussian_taps
    from fastbci.validation import ValTrials, pack_trials, run_validation

    ck = ckpt_io.load(checkpoint, trust=trust)
    cfg, cfg_source = resolve_config(checkpoint, config, overrides, ck)
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        cfg["dataset"]["batch_size"] = int(batch_size)
    device = select_device(cfg)
    model = GRUDecoder.from_config(cfg)
    try:
        model.load_official_state_dict(ck["model_state_dict"])
    except Exception as e:
        raise ckpt_io.CheckpointError(f"{checkpoint} does not fit the model of {cfg_source}: {e}") from None
    model = model.to(device).eval()
    ds, m = cfg["dataset"], cfg["model"]
    key = (split, json.dumps([ds, cfg["fastbci"]["bad_trial_policy"], m["patch_size"], m["patch_stride"]],
                             sort_keys=True, default=str))
    stores = {} if stores is None else stores
    store = stores.get(key) or data.TrialStore.from_config(cfg, split, device="cpu", progress=progress)
    stores[key] = store
    # the official loop runs every trial of the split's files; the trainer skips the val days
    # whose dataset_probability_val is 0
    mask = [bool(p) for p in ds["dataset_probability_val"]] if split == "val" and not official else None
    plan = data.val_batch_plan(store.trials_by_day, ds["batch_size"], day_mask=mask)
    batches = [np.asarray(plan[i]) for i in range(len(plan))]
    if not batches:
        raise ConfigError(f"the {split} split of {ds['dataset_dir']} holds no trial for the "
                          "configured sessions")
    res = run_validation(model, store, batches, BatchBuilder.from_config(cfg, device),
                         collect=True)
    packed = pack_trials(res.trials, store)  # sorted by (session, block, trial)
    rows = [int(r) for r in packed["row"]]
    labels = [store.seq_class_ids_np[r][:store.seq_len_np[r]] for r in rows] if store.has_labels else None
    run = SplitRun(str(checkpoint), cfg_source, (int(m["patch_size"]), int(m["patch_stride"])), "validation",
                   packed, labels, np.array([store.sentence_label[r] for r in rows]) if labels else None,
                   res.per, {ds["sessions"][d]: p for d, p in res.per_by_day.items()}, res.loss,
                   res.blank_fraction)
    if official:
        tf = ds["data_transforms"]
        taps = gaussian_taps(tf["smooth_kernel_std"], tf["smooth_kernel_size"])
        logits = official_eval.run_trials(model, [store.trial(r) for r in rows],
                                          [int(store.day_np[r]) for r in rows], store.trial_ids(rows), taps,
                                          device, bool(cfg["use_amp"]), m)
        packed = pack_trials(ValTrials(rows, logits, [official_eval.greedy_tokens(x) for x in logits]), store)
        run = ensemble.with_outputs(run, packed["logits"], "official", packed=packed, per_validation=run.per)
    return run


def _write_files(out: Path, split: str, run: SplitRun) -> dict[str, str]:
    """``transcripts_SPLIT.csv`` (greedy phonemes) and ``logits_SPLIT.npz``, written atomically."""
    from fastbci import metrics
    from fastbci.fileio import atomic_write
    packed = run.packed
    # single spaces between symbols; the silence symbol reads '|'
    texts = [" ".join(t.split()) for t in metrics.decode_to_text(
        torch.from_numpy(packed["tokens"]), torch.from_numpy(packed["n_tokens"]))]
    out.mkdir(parents=True, exist_ok=True)
    csv_path, npz_path = out / f"transcripts_{split}.csv", out / f"logits_{split}.npz"

    def write_csv(f):
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i, t in enumerate(texts):
            w.writerow([i, t])

    atomic_write(csv_path, write_csv)
    labelled = split == "val" and run.sentence_label is not None
    extra = {"sentence_label": run.sentence_label} if labelled else {}
    atomic_write(npz_path, lambda f: np.savez(f, **packed, **extra), mode="wb")
    return {"csv": str(csv_path), "npz": str(npz_path)}


def evaluate(checkpoint: str | Path | Sequence[str | Path], split: str = "val", *, config: str | None = None,
             overrides: Sequence[str] = (), out_dir: str | Path | None = None,
             batch_size: int | None = None, quiet: bool = False, lm: str | Path | None = None,
             lm_options: dict | None = None, trust: bool = False, official: bool = False,
             llm=None, llm_options: dict | None = None) -> dict:
    """Run the evaluation and write its files; returns a summary dict (``per``, ``per_by_day``,
    ``loss``, ``blank_fraction``, ``n_trials``, ``config``, ``files``; with ``lm``: ``wer``,
    ``wer_by_day``; with several checkpoints: ``models``, each model's PER). ``lm_options``:
    keyword arguments of :func:`fastbci.lm.decode_file` (decoder parameters, lexicon, workers,
    nbest, rescore); ``llm``: a causal LM folder / hub id that rescores the n-best
    (``llm_options``: :class:`fastbci.lm.LLMScorer` options). ``official``: the official
    per-trial semantics. ``trust``: load a checkpoint that needs full unpickling (it can run
    code)."""
    if split not in ("val", "test"):
        raise ConfigError(f"--split must be 'val' or 'test', got {split!r}")
    checkpoints = [Path(checkpoint)] if isinstance(checkpoint, (str, Path)) else [Path(c) for c in checkpoint]
    if not checkpoints:
        raise ConfigError("no --checkpoint given")
    scorer = _words_ready(lm, llm, llm_options)  # fail before the models run
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    stores: dict = {}
    runs = []
    for ck in checkpoints:
        runs.append(run_split(ck, split, config=config, overrides=overrides, batch_size=batch_size,
                              trust=trust, official=official, progress=not quiet, stores=stores))
        say(f"Evaluated {ck} on {len(runs[-1].packed['row'])} {split} trials (config: {runs[-1].config}"
            f"{', official per-trial semantics' if official else ''})")
    run = ensemble.combine(runs)
    out = Path(out_dir) if out_dir is not None else checkpoints[0].parent / f"eval_{split}"
    files = _write_files(out, split, run)
    summary = {"checkpoint": run.checkpoint, "split": split, "n_trials": len(run.packed["row"]),
               "config": run.config, "semantics": run.semantics, "per": run.per, "loss": run.loss,
               "blank_fraction": run.blank_fraction, "per_by_day": run.per_by_day, "files": files}
    if official:
        summary["per_validation"] = run.per_validation
    if len(runs) > 1:
        summary["models"] = [{"checkpoint": r.checkpoint, "per": r.per, "per_by_day": r.per_by_day}
                             for r in runs]
    if lm is not None:  # words: lexicon beam search with the n-gram LM over the logits just written
        from fastbci.lm.run import decode_file
        words = decode_file(files["npz"], lm, out=out / f"words_{split}.csv", say=say, llm=scorer,
                            **(lm_options or {}))
        files["words_csv"] = words["files"]["csv"]
        summary.update(wer=words["wer"], wer_by_day=words.get("by_day", {}))
        if scorer is not None:
            summary.update(llm=scorer.source, wer_decoder=words.get("wer_decoder"), rescore=words["rescore"])
    if split == "val":
        files["json"] = str(out / "per_val.json")
        atomic_write_text(files["json"], dumps(summary, indent=1))
        _say_val(summary, runs, say)
    say(f"Wrote {', '.join(files.values())}")
    return summary


def _words_ready(lm, llm, llm_options: dict | None):
    """Check the word decoder's inputs and load the LLM (before any model runs)."""
    if llm is not None and lm is None:
        raise ConfigError("--llm rescores the word decoder's n-best lists: pass --lm LM too")
    if lm is not None:
        from fastbci.lm.run import check_ready
        check_ready(lm)
    if llm is None:
        return None
    from fastbci.lm.rescore import scorer_of
    return scorer_of(llm, llm_options)


def _say_val(summary: dict, runs: Sequence[SplitRun], say) -> None:
    for s, p in summary["per_by_day"].items():
        say(f"  {s}: PER {100 * p:.2f}%" if p is not None else f"  {s}: no phonemes")
    n, what = summary["n_trials"], ("official per-trial" if summary["semantics"] == "official"
                                    else "validation-style")
    if len(runs) > 1:
        for r in runs:
            say(f"  model {r.checkpoint}: {what} PER "
                + (f"{100 * r.per:.2f}%" if r.per is not None else "(no labels)"))
    if summary["per"] is None:
        say(f"no phoneme labels in this split's files: no PER or loss over {n} trials")
        return
    extra = [f"loss {summary['loss']:.4f}"] if summary["loss"] is not None else []
    if summary.get("per_validation") is not None:
        extra.append(f"validation-style PER {100 * summary['per_validation']:.2f}%")
    extra.append(f"blank fraction {summary['blank_fraction']:.3f}")
    say(f"val {what} PER {100 * summary['per']:.2f}% ({', '.join(extra)}) over {n} trials"
        + (f", ensemble of {len(runs)} models" if len(runs) > 1 else ""))


def _parser() -> argparse.ArgumentParser:
    from fastbci.lm.params import DEFAULT_LLM_NBEST, add_decoder_args, add_llm_args
    p = argparse.ArgumentParser(
        prog="python -m fastbci.evaluate",
        description="Evaluate a fastbci or official checkpoint (or an ensemble of several): PER "
                    "(val), greedy phoneme transcripts (CSV id,text) and logits (npz) for "
                    "language-model decoding; with --lm also words, WER and a submission-format "
                    "CSV, with --llm after rescoring the n-best with a causal LM.",
        epilog="Exit status: 0 done, 2 bad input (configuration, data, checkpoint, disk), "
               "5 flashlight-text missing for --lm or transformers for --llm.")
    p.add_argument("--checkpoint", required=True, action="append",
                   help="checkpoint file (e.g. .../checkpoint/best_checkpoint); repeat it for an "
                        "ensemble (the models' log-probabilities averaged per trial)")
    p.add_argument("--official-eval", action="store_true",
                   help="the official evaluate_model.py semantics: one trial at a time, 'valid' "
                        "smoothing, bfloat16 autocast on CUDA (default: the trainer's validation)")
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="val: score PER (and WER with --lm) against the labels; test: the "
                        "unlabelled split, transcripts only (the competition's submission)")
    p.add_argument("--config", default=None,
                   help="YAML config (default: the one the checkpoint carries, else args.yaml "
                        "beside it)")
    p.add_argument("--out", default=None, help="output directory (default: CHECKPOINT_DIR/eval_SPLIT)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="evaluation batch size (default: the config's)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar and no per-day report on stderr (the summary lines stay)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="also load a checkpoint that needs full unpickling: it can run code, use "
                        "only for files you trust")
    p.add_argument("--lm", default=None,
                   help="n-gram LM (ARPA or KenLM binary): also decode words, WER and words_SPLIT.csv")
    p.add_argument("--lm-nbest", type=int, default=None,
                   help=f"hypotheses per trial kept by the word decoder for --llm (default "
                        f"{DEFAULT_LLM_NBEST}) and --lm-nbest-out")
    p.add_argument("--lm-nbest-out", default=None, help="write the decoder's n-best lists (CSV)")
    add_decoder_args(p, prefix="lm-")
    add_llm_args(p)
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p


def _word_options(args: argparse.Namespace) -> tuple[dict | None, dict | None]:
    """``decode_file`` keyword arguments and LLMScorer options of the parsed command line."""
    from fastbci.lm.params import DEFAULT_LLM_NBEST, decoder_kwargs, llm_options, rescore_from_args
    if not args.lm:
        return None, None
    nbest = args.lm_nbest if args.lm_nbest is not None else (DEFAULT_LLM_NBEST if args.llm else 1)
    if nbest < 1:
        raise ConfigError(f"--lm-nbest must be >= 1, got {nbest}")
    opts = dict(decoder_kwargs(args), nbest=nbest, nbest_out=args.lm_nbest_out)
    if not args.llm:
        return opts, None
    return dict(opts, rescore=rescore_from_args(args)), llm_options(args)


def main(argv: Sequence[str] | None = None) -> int:
    from fastbci.errors import EXIT_OK, run_command

    args = _parser().parse_args(argv)

    def run() -> int:
        lm_options, llm_opts = _word_options(args)
        summary = evaluate(args.checkpoint, args.split, config=args.config, overrides=args.overrides,
                           out_dir=args.out, batch_size=args.batch_size, quiet=args.quiet,
                           lm=args.lm, lm_options=lm_options, trust=args.trust_checkpoint,
                           official=args.official_eval, llm=args.llm, llm_options=llm_opts)
        for m in summary.get("models", []):
            if m["per"] is not None:
                print(f"{summary['split']} PER of {m['checkpoint']}: {100 * m['per']:.2f}%")
        if summary["per"] is not None:
            print(f"{summary['split']} PER{' (ensemble)' if 'models' in summary else ''}: "
                  f"{100 * summary['per']:.2f}%")
        if summary.get("wer") is not None:
            print(f"{summary['split']} WER: {100 * summary['wer']:.2f}%")
        return EXIT_OK

    return run_command(run, prog="fastbci.evaluate")


if __name__ == "__main__":
    sys.exit(main())
