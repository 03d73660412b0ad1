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

The configuration is, in order of preference: ``--config``, the ``args.yaml`` beside the
checkpoint (official layout), or the configuration a fastbci checkpoint carries; ``key=value``
overrides apply on top (e.g. ``dataset.dataset_dir=/data/hdf5_data_final``).
Exit status: 0 done, 2 bad input (message names the file / key), 3 ``--lm`` without
flashlight-text installed.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fastbci import checkpoint as ckpt_io
from fastbci import config as config_mod
from fastbci.config import ConfigError


def resolve_config(checkpoint: Path, config: str | None, overrides: Sequence[str],
                   ck: dict) -> tuple[dict, str]:
    """The evaluation configuration and where it came from (see the module docstring)."""
    if config is not None:
        return config_mod.load_config(config, overrides), str(config)
    beside = checkpoint.parent / "args.yaml"
    if beside.is_file():
        return config_mod.load_config(beside, overrides), str(beside)
    embedded = (ck.get("fastbci") or {}).get("config")
    if isinstance(embedded, dict):
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "args.yaml"
            config_mod.dump(embedded, p)
            return config_mod.load_config(p, overrides), f"the configuration stored in {checkpoint}"
    raise ConfigError(f"no configuration for {checkpoint}: pass --config CFG (there is no args.yaml "
                      "beside the checkpoint and it carries no fastbci configuration)")


def evaluate(checkpoint: str | Path, split: str = "val", *, config: str | None = None,
             overrides: Sequence[str] = (), out_dir: str | Path | None = None,
             batch_size: int | None = None, quiet: bool = False, lm: str | Path | None = None,
             lm_options: dict | None = None) -> dict:
    """Run the evaluation and write its files; returns a summary dict (``per``, ``per_by_day``,
    ``loss``, ``blank_fraction``, ``n_trials``, ``files``; with ``lm``: ``wer``, ``wer_by_day``).
    ``lm_options``: keyword arguments of :func:`fastbci.lm.decode_file` (decoder parameters,
    lexicon, workers)."""
    from fastbci import data, metrics
    from fastbci.data.batch import BatchBuilder
    from fastbci.devices import resolve_impl, select_device
    from fastbci.model import GRUDecoder
    from fastbci.training.validation import pack_trials, run_validation

    if split not in ("val", "test"):
        raise ConfigError(f"--split must be 'val' or 'test', got {split!r}")
    if lm is not None:  # words: fail before the model runs
        from fastbci.lm.run import check_ready
        check_ready(lm)
    checkpoint = Path(checkpoint)
    ck = ckpt_io.load(checkpoint)
    cfg, cfg_source = resolve_config(checkpoint, config, overrides, ck)
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        cfg["dataset"]["batch_size"] = int(batch_size)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))

    device = select_device(cfg)
    impl = resolve_impl(cfg, device)
    rng = cfg["fastbci"]["rng"]
    model = GRUDecoder.from_config(cfg, impl=impl, rng=rng)
    try:
        model.load_official_state_dict(ck["model_state_dict"])
    except Exception as e:
        raise ckpt_io.CheckpointError(f"{checkpoint} does not fit the model of {cfg_source}: {e}") from None
    model.to(device).eval()

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
    res = run_validation(model, store, batches, cfg, BatchBuilder(cfg, device, impl, rng),
                         collect=True)

    sessions = ds["sessions"]
    packed = pack_trials(res.trials, store)  # sorted by (session, block, trial)
    rows = packed["row"]
    n = len(rows)
    # single spaces between symbols; the silence symbol reads '|'
    texts = [" ".join(t.split()) for t in metrics.decode_to_text(
        torch.from_numpy(packed["tokens"]), torch.from_numpy(packed["n_tokens"]))]

    out = Path(out_dir) if out_dir is not None else checkpoint.parent / f"eval_{split}"
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    csv_path = out / f"transcripts_{split}.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i, t in enumerate(texts):
            w.writerow([i, t])
    files["csv"] = str(csv_path)
    npz_path = out / f"logits_{split}.npz"
    extra = {}
    labels = getattr(store, "sentence_label", None)
    if split == "val" and labels is not None:
        extra["sentence_label"] = np.array([labels[r] for r in rows])
    np.savez(npz_path, **packed, **extra)
    files["npz"] = str(npz_path)
    summary = {"checkpoint": str(checkpoint), "split": split, "n_trials": n,
               "per": res.per, "loss": res.loss, "blank_fraction": res.blank_fraction,
               "per_by_day": {sessions[d]: p for d, p in res.per_by_day.items()},
               "files": files}
    if lm is not None:  # words: lexicon beam search with the n-gram LM over the logits just written
        from fastbci.lm.run import decode_file
        words = decode_file(npz_path, lm, out=out / f"words_{split}.csv", say=say, **(lm_options or {}))
        files["words_csv"] = words["files"]["csv"]
        summary.update(wer=words["wer"], wer_by_day=words.get("by_day", {}))
    if split == "val":
        json_path = out / "per_val.json"
        with open(json_path, "w") as f:
            json.dump(summary, f, indent=1)
        files["json"] = str(json_path)
        for s, p in summary["per_by_day"].items():
            say(f"  {s}: PER {100 * p:.2f}%" if p is not None else f"  {s}: no phonemes")
        if res.per is not None:
            say(f"val PER {100 * res.per:.2f}% (loss {res.loss:.4f}, blank fraction "
                f"{res.blank_fraction:.3f}) over {n} trials")
        else:
            say(f"no phoneme labels in this split's files: no PER or loss over {n} trials")
    say(f"Wrote {', '.join(files.values())}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    # the word decoder's options (flashlight-text itself is imported only with --lm)
    from fastbci.lm.decoder import LMUnavailableError
    from fastbci.lm.params import add_decoder_args, decoder_kwargs

    p = argparse.ArgumentParser(
        prog="python -m fastbci.evaluate",
        description="Evaluate a fastbci or official checkpoint: PER (val), greedy phoneme "
                    "transcripts (CSV id,text) and logits (npz) for language-model decoding.")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint file (e.g. .../checkpoint/best_checkpoint)")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--config", default=None, help="YAML config (default: args.yaml beside the checkpoint)")
    p.add_argument("--out", default=None, help="output directory (default: CHECKPOINT_DIR/eval_SPLIT)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="evaluation batch size (default: the config's)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--lm", default=None,
                   help="n-gram LM (ARPA or KenLM binary): also decode words, WER and words_SPLIT.csv")
    add_decoder_args(p, prefix="lm-")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)
    try:
        lm_options = decoder_kwargs(args) if args.lm else None
        summary = evaluate(args.checkpoint, args.split, config=args.config, overrides=args.overrides,
                           out_dir=args.out, batch_size=args.batch_size, quiet=args.quiet,
                           lm=args.lm, lm_options=lm_options)
    except (ConfigError, ckpt_io.CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"fastbci.evaluate: error: {e}", file=sys.stderr)
        return 2
    except LMUnavailableError as e:
        print(f"fastbci.evaluate: {e}", file=sys.stderr)
        return 3
    if summary["per"] is not None:
        print(f"{summary['split']} PER: {100 * summary['per']:.2f}%")
    if summary.get("wer") is not None:
        print(f"{summary['split']} WER: {100 * summary['wer']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
