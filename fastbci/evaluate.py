"""Evaluate a checkpoint: ``python -m fastbci.evaluate --checkpoint PATH --split val|test``.

Loads a fastbci or an official checkpoint (a dict with ``model_state_dict``; ``_orig_mod.`` and
``module.`` prefixes are stripped), runs the model on every trial of the split (smoothing only,
as the trainer's validation, batched by day in file order) and writes to the output directory:

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
  split), and for val the WER overall and per day (also in the JSON).

The configuration is, in order of preference: ``--config``, the configuration a fastbci
checkpoint carries (what it was trained with), or the ``args.yaml`` beside the checkpoint
(official layout); ``key=value`` overrides apply on top (e.g.
``dataset.dataset_dir=/data/hdf5_data_final``); the one used is printed and recorded.
Exit status (as every fastbci command, :mod:`fastbci.errors`): 0 done, 2 bad input (message
names the file / key), 5 ``--lm`` without flashlight-text installed.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fastbci import checkpoint as ckpt_io
from fastbci import config as config_mod
from fastbci.config import ConfigError


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


def _load_model(checkpoint: Path, config, overrides, batch_size, trust: bool):
    """The checkpoint, its configuration (and source), the device and the model on it."""
    from fastbci.devices import select_device
    from fastbci.model import GRUDecoder
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
    return cfg, cfg_source, device, model.to(device).eval()


def _write_files(out: Path, split: str, packed: dict, store) -> dict[str, str]:
    """``transcripts_SPLIT.csv`` (greedy phonemes) and ``logits_SPLIT.npz``, written atomically."""
    from fastbci import metrics
    from fastbci.fileio import atomic_write
    rows = packed["row"]
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
    extra = {}
    if split == "val" and store.sentence_label is not None:
        extra["sentence_label"] = np.array([store.sentence_label[r] for r in rows])
    atomic_write(npz_path, lambda f: np.savez(f, **packed, **extra), mode="wb")
    return {"csv": str(csv_path), "npz": str(npz_path)}


def evaluate(checkpoint: str | Path, split: str = "val", *, config: str | None = None,
             overrides: Sequence[str] = (), out_dir: str | Path | None = None,
             batch_size: int | None = None, quiet: bool = False, lm: str | Path | None = None,
             lm_options: dict | None = None, trust: bool = False) -> dict:
    """Run the evaluation and write its files; returns a summary dict (``per``, ``per_by_day``,
    ``loss``, ``blank_fraction``, ``n_trials``, ``config``, ``files``; with ``lm``: ``wer``,
    ``wer_by_day``). ``lm_options``: keyword arguments of :func:`fastbci.lm.decode_file`
    (decoder parameters, lexicon, workers). ``trust``: load a checkpoint that needs full
    unpickling (it can run code)."""
    from fastbci import data
    from fastbci.data.batch import BatchBuilder
    from fastbci.fileio import atomic_write_text, dumps
    from fastbci.validation import pack_trials, run_validation

    if split not in ("val", "test"):
        raise ConfigError(f"--split must be 'val' or 'test', got {split!r}")
    if lm is not None:  # words: fail before the model runs
        from fastbci.lm.run import check_ready
        check_ready(lm)
    checkpoint = Path(checkpoint)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    cfg, cfg_source, device, model = _load_model(checkpoint, config, overrides, batch_size,
                                                       trust)
    store = data.TrialStore.from_config(cfg, split, device="cpu", progress=not quiet)
    ds = cfg["dataset"]
    mask = [bool(p) for p in ds["dataset_probability_val"]] if split == "val" else None
    plan = data.val_batch_plan(store.trials_by_day, ds["batch_size"], day_mask=mask)
    batches = [np.asarray(plan[i]) for i in range(len(plan))]
    if not batches:
        raise ConfigError(f"the {split} split of {ds['dataset_dir']} holds no trial for the "
                          "configured sessions")
    say(f"Evaluating {checkpoint} on {sum(len(b) for b in batches)} {split} trials "
        f"(config: {cfg_source}, device {device})")
    res = run_validation(model, store, batches,
                         BatchBuilder.from_config(cfg, device), collect=True)
    packed = pack_trials(res.trials, store)  # sorted by (session, block, trial)
    out = Path(out_dir) if out_dir is not None else checkpoint.parent / f"eval_{split}"
    files = _write_files(out, split, packed, store)
    summary = {"checkpoint": str(checkpoint), "split": split, "n_trials": len(packed["row"]),
               "config": cfg_source, "per": res.per, "loss": res.loss,
               "blank_fraction": res.blank_fraction,
               "per_by_day": {ds["sessions"][d]: p for d, p in res.per_by_day.items()},
               "files": files}
    if lm is not None:  # words: lexicon beam search with the n-gram LM over the logits just written
        from fastbci.lm.run import decode_file
        words = decode_file(files["npz"], lm, out=out / f"words_{split}.csv", say=say,
                            **(lm_options or {}))
        files["words_csv"] = words["files"]["csv"]
        summary.update(wer=words["wer"], wer_by_day=words.get("by_day", {}))
    if split == "val":
        files["json"] = str(out / "per_val.json")
        atomic_write_text(files["json"], dumps(summary, indent=1))
        _say_val(summary, res, say)
    say(f"Wrote {', '.join(files.values())}")
    return summary


def _say_val(summary: dict, res, say) -> None:
    for s, p in summary["per_by_day"].items():
        say(f"  {s}: PER {100 * p:.2f}%" if p is not None else f"  {s}: no phonemes")
    n = summary["n_trials"]
    if res.per is not None:
        say(f"val PER {100 * res.per:.2f}% (loss {res.loss:.4f}, blank fraction "
            f"{res.blank_fraction:.3f}) over {n} trials")
    else:
        say(f"no phoneme labels in this split's files: no PER or loss over {n} trials")


def _parser() -> argparse.ArgumentParser:
    from fastbci.lm.params import add_decoder_args
    p = argparse.ArgumentParser(
        prog="python -m fastbci.evaluate",
        description="Evaluate a fastbci or official checkpoint: PER (val), greedy phoneme "
                    "transcripts (CSV id,text) and logits (npz) for language-model decoding; "
                    "with --lm also words, WER and a submission-format CSV.",
        epilog="Exit status: 0 done, 2 bad input (configuration, data, checkpoint, disk), "
               "5 flashlight-text missing for --lm.")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint file (e.g. .../checkpoint/best_checkpoint)")
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
    add_decoder_args(p, prefix="lm-")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from fastbci.errors import EXIT_OK, run_command
    # the word decoder's options (flashlight-text itself is imported only with --lm)
    from fastbci.lm.params import decoder_kwargs

    args = _parser().parse_args(argv)

    def run() -> int:
        lm_options = decoder_kwargs(args) if args.lm else None
        summary = evaluate(args.checkpoint, args.split, config=args.config, overrides=args.overrides,
                           out_dir=args.out, batch_size=args.batch_size, quiet=args.quiet,
                           lm=args.lm, lm_options=lm_options, trust=args.trust_checkpoint)
        if summary["per"] is not None:
            print(f"{summary['split']} PER: {100 * summary['per']:.2f}%")
        if summary.get("wer") is not None:
            print(f"{summary['split']} WER: {100 * summary['wer']:.2f}%")
        return EXIT_OK

    return run_command(run, prog="fastbci.evaluate")


if __name__ == "__main__":
    sys.exit(main())
