"""Evaluating checkpoints: a model (or an ensemble) on a split, its files, its PER and, with
an n-gram LM, its words and WER (``fastbci evaluate``; :func:`evaluate` from Python).

:func:`run_split` runs one loaded model on every trial of the split (smoothing only, as the
trainer's validation, batched by day in file order; with ``official=True`` one trial at a time
as the official ``evaluate_model.py``, :mod:`fastbci.official_eval`). :func:`evaluate` writes,
into its output folder:

* ``transcripts_{split}.csv``: ``id,text``, one row per trial, ids 0..N-1 in (session, block,
  trial) order, text = the greedy phoneme transcript (symbols separated by spaces, silence
  written ``|``);
* ``logits_{split}.npz``: the per-frame logits for external language-model decoding, packed:
  ``logits`` (sum of lengths, n_classes) float32; trial ``i`` (same order and id as the CSV) is
  ``logits[offsets[i]:offsets[i + 1]]``; also ``lengths``, ``ids``, ``tokens`` / ``n_tokens``
  (the greedy decoding, padded with -1), ``session``, ``day``, ``block_num``, ``trial_num``,
  ``row`` (TrialStore row) and, for val, ``sentence_label``;
* ``per_{split}.json`` (val only): PER overall and per day, CTC loss, blank fraction;
* with ``adapt`` (test-time day adaptation, ``--adapt-day``): every file above holds the
  adapted model's outputs; the summary and ``per_{split}.json`` give the PER without
  adaptation too (``adaptation``). The adapter gets the split's trials without their labels;
* with ``lm`` (an ARPA file or KenLM binary): ``words_{split}.csv``, ``id,text`` with the
  sentences of :mod:`fastbci.lm`'s lexicon beam search (the submission format for the test
  split), and for val the WER overall and per day (also in the JSON); with ``llm`` the
  decoder's n-best lists are rescored by that causal LM first (:mod:`fastbci.lm.rescore`).

Several checkpoints make an ensemble (:mod:`fastbci.ensemble`): the per-trial log-probabilities
of the models are averaged, and the files above hold the ensemble's; the summary gives each
model's PER too. The configuration of each checkpoint: :func:`fastbci.loading.resolve_config`.
The output files follow fastbci's output rule (:mod:`fastbci.outputs`): checked before any model
runs.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch

from fastbci import ensemble, official_eval, outputs
from fastbci.config import ConfigError
from fastbci.ensemble import SplitRun
from fastbci.fileio import atomic_write_text, dumps
from fastbci.loading import Loaded, load_model

__all__ = ["run_split", "evaluate", "output_files", "DayAdapter", "adapt_days", "without_labels"]


class DayAdapter(Protocol):
    """Test-time day adaptation (:class:`fastbci.calibration.DayAdaptation`): adapts the day
    layers of ``model`` in place on ``store``'s trials, which come without labels; returns its
    report."""
    def __call__(self, model: Any, cfg: Mapping, store: Any, device: torch.device,
                 say: Callable[[str], None] = ...) -> dict: ...


def _split_store(loaded: Loaded, split: str, stores: dict, progress: bool):
    """The split's store for ``loaded``'s data configuration (reused from ``stores``)."""
    from fastbci import data
    cfg = loaded.cfg
    ds, m = cfg["dataset"], cfg["model"]
    key = (split, json.dumps([ds, cfg["fastbci"]["bad_trial_policy"], m["patch_size"], m["patch_stride"]],
                             sort_keys=True, default=str))
    store = stores.get(key) or data.TrialStore.from_config(cfg, split, device="cpu", progress=progress)
    stores[key] = store
    return store


def without_labels(store):
    """``store`` (a :class:`~fastbci.data.TrialStore`) with no label of any kind: no phonemes,
    transcriptions or sentence texts, so that what it is handed to cannot read them."""
    import dataclasses

    from fastbci.data import TrialStore
    data = dataclasses.replace(store.data, seq_class_ids=None, seq_len=None, transcriptions=None,
                               sentence_label=("",) * store.n_trials)
    return TrialStore(data, store.device)


def adapt_days(loaded: Loaded, split: str, adapt: DayAdapter, *, stores: dict | None = None,
               progress: bool = True, say: Callable[[str], None] = lambda s: None) -> dict:
    """Adapt ``loaded``'s day layers, in place, with ``adapt`` on the split's own trials, handed
    over without any label (phonemes, transcriptions and sentences removed); returns the
    adapter's report."""
    from fastbci.devices import select_device
    store = _split_store(loaded, split, {} if stores is None else stores, progress)
    device = select_device(loaded.cfg)
    loaded.model.to(device)
    return adapt(loaded.model, loaded.cfg, without_labels(store), device, say=say)


def run_split(loaded: Loaded, split: str, *, batch_size: int | None = None, official: bool = False,
              progress: bool = True, stores: dict | None = None) -> SplitRun:
    """Run a loaded model (:func:`fastbci.loading.load_model`) on ``split``: the per-trial
    outputs and the PER. The one place that uses the training-side APIs. ``official``: the
    official per-trial semantics (the validation-style PER is kept as ``per_validation``);
    ``stores``: split stores already loaded, reused when the data configuration is the same (an
    ensemble)."""
    from fastbci import data
    from fastbci.data.batch import BatchBuilder
    from fastbci.devices import select_device
    from fastbci.reference import gaussian_taps
    from fastbci.validation import ValTrials, pack_trials, run_validation

    checkpoint, cfg, cfg_source = loaded.path, loaded.cfg, loaded.source
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"the evaluation batch size must be >= 1, got {batch_size}")
        cfg["dataset"]["batch_size"] = int(batch_size)
    device = select_device(cfg)
    model = loaded.model.to(device).eval()
    ds, m = cfg["dataset"], cfg["model"]
    store = _split_store(loaded, split, {} if stores is None else stores, progress)
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


def output_files(out: Path, split: str, *, lm: bool = False, nbest_out=None,
                 rescored_out=None) -> list[tuple[str, Path | None]]:
    """Every file :func:`evaluate` writes, as ``(what, path)``."""
    files = [("--out", out / f"transcripts_{split}.csv"), ("--out", out / f"logits_{split}.npz")]
    if split == "val":
        files.append(("--out", out / "per_val.json"))
    if lm:
        files.append(("--out", out / f"words_{split}.csv"))
    return files + [("--nbest-file", nbest_out), ("--rescored-out", rescored_out)]


def _inputs(checkpoints: Sequence[Path], models: Sequence[Loaded], lm,
            lm_options: dict | None) -> list[tuple[str, object]]:
    opts = lm_options or {}
    return ([("checkpoint", c) for c in checkpoints]
            + [("data folder (dataset.dataset_dir)", m.cfg["dataset"]["dataset_dir"]) for m in models]
            + [("LM", lm), ("lexicon", opts.get("lexicon"))])


@outputs.writes("evaluate")
def evaluate(checkpoint: str | Path | Sequence[str | Path], split: str = "val", *, config: str | None = None,
             overrides: Sequence[str] = (), out_dir: str | Path | None = None,
             batch_size: int | None = None, quiet: bool = False, lm: str | Path | None = None,
             lm_options: dict | None = None, trust: bool = False, official: bool = False,
             llm=None, llm_options: dict | None = None, overwrite: bool = False,
             adapt: DayAdapter | None = None, say: Callable[[str], None] | None = None) -> dict:
    """Run the evaluation and write its files; returns a summary dict (``per``, ``per_by_day``,
    ``loss``, ``blank_fraction``, ``n_trials``, ``config``, ``files``; with ``lm``: ``wer``,
    ``wer_by_day``; with several checkpoints: ``models``, each model's PER and PER by day).
    ``lm_options``: keyword arguments of :func:`fastbci.lm.decode_file` (decoder parameters,
    lexicon, workers, nbest, nbest_out, rescore); ``llm``: a causal LM folder / hub id that
    rescores the n-best (``llm_options``: :class:`fastbci.lm.LLMScorer` options). ``official``:
    the official per-trial semantics. ``trust``: load a checkpoint that needs full unpickling (it
    can run code). ``overwrite``: replace the files an earlier evaluation wrote there. ``adapt``:
    test-time day adaptation (:class:`fastbci.calibration.DayAdaptation`): each model's day
    layers adapted on the split's trials, without their labels, before the outputs are made;
    the summary's ``adaptation`` gives the PER without it (``per_without``,
    ``per_by_day_without``, ``loss_without``) and the adapter's report per model (``models``).
    ``say``: where progress lines go (default stderr unless ``quiet``)."""
    import sys
    if split not in ("val", "test"):
        raise ConfigError(f"the split must be 'val' or 'test', got {split!r}")
    checkpoints = [Path(checkpoint)] if isinstance(checkpoint, (str, Path)) else [Path(c) for c in checkpoint]
    if not checkpoints:
        raise ConfigError("no checkpoint given")
    say = say or ((lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr)))
    models = [load_model(c, config=config, overrides=overrides, trust=trust) for c in checkpoints]
    out = Path(out_dir) if out_dir is not None else checkpoints[0].parent / f"eval_{split}"
    opts = dict(lm_options or {})
    inputs = _inputs(checkpoints, models, lm, opts)
    why = outputs.meeting(out, inputs, folder=True)
    if why:
        raise outputs.OutputError(f"--out {out}: {why}; refused even with --overwrite: choose "
                                  "another folder")
    outputs.check_files(output_files(out, split, lm=lm is not None, nbest_out=opts.get("nbest_out"),
                                     rescored_out=opts.get("rescored_out")),
                        inputs=inputs, overwrite=overwrite)
    scorer = _words_ready(lm, llm, llm_options)  # fail before the models run
    (run, parts), (plain, plain_parts), reports = _run_models(models, split, batch_size, official,
                                                             quiet, adapt, say)
    files = _write_files(out, split, run)
    summary = {"checkpoint": run.checkpoint, "split": split, "n_trials": len(run.packed["row"]),
               "config": run.config, "semantics": run.semantics, "per": run.per, "loss": run.loss,
               "blank_fraction": run.blank_fraction, "per_by_day": run.per_by_day, "files": files}
    if official:
        summary["per_validation"] = run.per_validation
    if len(models) > 1:
        summary["models"] = [{"checkpoint": r.checkpoint, "per": r.per, "per_by_day": r.per_by_day}
                             for r in parts]
        if plain is not None:
            for m, r in zip(summary["models"], plain_parts):
                m["per_without_adaptation"] = r.per
    if plain is not None:  # the outputs are the adapted model's: the PER without it beside them
        summary["adaptation"] = {"per_without": plain.per, "per_by_day_without": plain.per_by_day,
                                 "loss_without": plain.loss, "models": reports}
    if lm is not None:  # words: lexicon beam search with the n-gram LM over the logits just written
        from fastbci.lm.run import decode_file
        words = decode_file(files["npz"], lm, out=out / f"words_{split}.csv", say=say, llm=scorer,
                            overwrite=overwrite, **opts)
        files["words_csv"] = words["files"]["csv"]
        summary.update(wer=words["wer"], wer_by_day=words.get("by_day", {}))
        if scorer is not None:
            summary.update(llm=scorer.source, wer_decoder=words.get("wer_decoder"), rescore=words["rescore"])
    if split == "val":
        files["json"] = str(out / "per_val.json")
        atomic_write_text(files["json"], dumps(summary, indent=1))
    say(f"Wrote {', '.join(files.values())}")
    return summary


def _run_models(models: Sequence[Loaded], split: str, batch_size: int | None, official: bool,
                quiet: bool, adapt: DayAdapter | None, say):
    """Every model on the split (with ``adapt``: before and after adapting its day layers on the
    split's trials); returns ``(run, parts)`` whose outputs are written (the ensemble of the
    models' runs, adapted with ``adapt``), the same without adaptation (``(None, [])`` without
    ``adapt``) and the adapters' reports."""
    stores: dict = {}
    runs, adapted, reports = [], [], []
    for loaded in models:
        runs.append(run_split(loaded, split, batch_size=batch_size, official=official,
                              progress=not quiet, stores=stores))
        say(f"Evaluated {loaded.path} on {len(runs[-1].packed['row'])} {split} trials (config: "
            f"{runs[-1].config}{', official per-trial semantics' if official else ''})")
        if adapt is None:
            continue
        reports.append(adapt_days(loaded, split, adapt, stores=stores, progress=not quiet, say=say))
        adapted.append(run_split(loaded, split, batch_size=batch_size, official=official,
                                 progress=not quiet, stores=stores))
        say(f"Adapted its day layers on the {split} trials ({reports[-1]['seconds']:.1f} s) and "
            "evaluated it again")
    if adapt is None:
        return (ensemble.combine(runs), runs), (None, []), reports
    return (ensemble.combine(adapted), adapted), (ensemble.combine(runs), runs), reports


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
