"""The fastbci trainer: ``python -m fastbci.train CONFIG [key=value ...]``.

It trains the Brain-to-Text '25 baseline phoneme decoder as the official trainer does
(RECIPE.md sections 2, 5 and 6: seeds, batch plan, augmentation, model, AdamW groups, schedule,
CTC, clipping, validation, best checkpoint, early stopping), with the official trainer's known
defects fixed (docs/official-defects.md) and these additions:

* data from a :class:`fastbci.data.TrialStore` loaded once, and the fused data path
  (``fastbci.impl``: ``auto`` = fused on CUDA, reference on CPU; ``fastbci.rng``: ``philox``
  counter-based random streams, or ``torch`` = the official draw order);
* exact resume (``fastbci.resume=true`` or a checkpoint path): same batches, same random
  streams, same losses as an uninterrupted run; resumable checkpoints at every validation, every
  ``fastbci.checkpoint_every`` batches and on Ctrl-C;
* an output-directory policy (never overwrite silently), a progress bar, ``train.log``,
  ``metrics.jsonl`` and a PNG of the curves;
* a blank-collapse watch and a non-finite loss / gradient diagnosis naming the batch, the day
  and the trials, with the policy ``fastbci.nonfinite_policy`` (``stop`` | ``skip``).

Files of a run: ``output_dir/train.log``, ``output_dir/metrics.jsonl`` (one JSON object per
train log and per validation: batch, split, loss, per, per_by_day, blank_fraction, lr, seconds;
train records also carry grad_norm, and their PER is that of the augmented training batch),
``output_dir/training_curves.png``, ``args.yaml`` in both folders, and in ``checkpoint_dir``
the checkpoints of :mod:`fastbci.checkpoint`, ``val_metrics.json`` and ``val_logits.npz``
(best validation, with ``save_val_metrics`` / ``save_val_logits``).

Exit status of the CLI: 0 finished (also after early stopping), 2 configuration / input error,
3 stopped by the blank-collapse watch, 4 stopped on a non-finite loss or gradient,
130 interrupted (a resumable checkpoint was saved).

Structure (for a rank-aware wrapper): :class:`DataPath` turns store rows into device batches,
:meth:`Trainer.train_step` runs one optimisation step, :meth:`Trainer.validate` evaluates the
model on the validation plan (through :func:`run_validation`), :meth:`Trainer._sum_across_ranks`
is the one place where statistics are summed over processes (the identity here), and every side
effect that only rank 0 may have (files, logs, progress bar) goes through :attr:`Trainer.is_main`.

Multi-process training: launched by ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` in
the environment, ``WORLD_SIZE > 1``), :func:`main` hands over to
:class:`fastbci.distributed.DistributedTrainer`; see docs/distributed.md.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fastbci import checkpoint as ckpt_io
from fastbci import config as config_mod
from fastbci import schedule
from fastbci.config import ConfigError

LOGGER_NAME = "fastbci.train"

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_COLLAPSE = 3
EXIT_NONFINITE = 4
EXIT_INTERRUPTED = 130


# ---------------------------------------------------------------------------------------------
# errors that stop training
# ---------------------------------------------------------------------------------------------
class TrainingStopped(RuntimeError):
    """Training stopped before the last batch for a reason the user must see."""
    exit_code = 1


class NonFiniteError(TrainingStopped):
    """A non-finite loss or gradient under ``fastbci.nonfinite_policy=stop``."""
    exit_code = EXIT_NONFINITE


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """The official trainer's seeding before the model is built (skipped when ``seed == -1``)."""
    if seed != -1:
        np.random.seed(seed)
        random.seed(seed)
        torch.manual_seed(seed)


def select_device(cfg: Mapping, log: logging.Logger | None = None) -> torch.device:
    """``fastbci.device``: ``auto`` uses ``cuda:{gpu_number}``, falling back to GPU 0 when that
    GPU does not exist and to the CPU without CUDA (each fallback is logged); ``cpu``, ``cuda``
    and ``cuda:N`` are taken as given (an error when CUDA or GPU N is missing)."""
    want = str(config_mod.get(cfg, "fastbci.device", "auto"))
    info = log.info if log else (lambda *_: None)
    if want == "auto":
        if not torch.cuda.is_available():
            info("No CUDA device: training on the CPU")
            return torch.device("cpu")
        try:
            n = int(cfg.get("gpu_number", 0))
        except (TypeError, ValueError):
            raise ConfigError(f"gpu_number must be a GPU index, got {cfg.get('gpu_number')!r}") from None
        count = torch.cuda.device_count()
        if not 0 <= n < count:
            info(f"gpu_number {n} does not exist on this machine ({count} GPU(s)): using cuda:0")
            n = 0
        return torch.device(f"cuda:{n}")
    try:
        dev = torch.device(want)
    except RuntimeError:
        raise ConfigError(f"fastbci.device: {want!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"fastbci.device={want} but CUDA is not available on this machine; "
                              "use fastbci.device=auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"fastbci.device={want} but this machine has "
                              f"{torch.cuda.device_count()} GPU(s)")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise ConfigError(f"fastbci.device: {want!r} is not supported (auto, cpu, cuda or cuda:N)")
    return dev


def resolve_impl(cfg: Mapping, device: torch.device) -> str:
    """``fastbci.impl`` with ``auto`` resolved: ``fused`` on CUDA, ``reference`` elsewhere."""
    impl = config_mod.get(cfg, "fastbci.impl", "auto")
    if impl == "auto":
        return "fused" if device.type == "cuda" else "reference"
    return impl


def input_lengths(n_time_steps: torch.Tensor, patch_size: int, patch_stride: int) -> torch.Tensor:
    """CTC input lengths: int32 of ``(n - patch_size) / patch_stride + 1`` in floating point, as
    official; without patching (``patch_size == 0``) the lengths are ``n`` itself (the official
    formula divides by zero there)."""
    if patch_size > 0:
        return ((n_time_steps.to(torch.float32) - patch_size) / patch_stride + 1).to(torch.int32)
    return n_time_steps.to(torch.int32)


def _autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``use_amp``; nothing on the CPU (as the official trainer, whose
    autocast names device type 'cuda' and therefore does nothing on a CPU run)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for a nested configuration."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v and f"{prefix}{k}" != "dataset.bad_trials_dict":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


class StepTimer:
    """Wall time of one training step, honest on an asynchronous device.

    On CUDA two events bracket the step on the current stream and :meth:`stop` waits for the
    second one, so the figure covers the step's device work (a host clock alone would stop
    when the last kernel is queued, not when it has run); elsewhere a host clock. Only the
    timed (log) steps pay the wait."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
        self._t0: float | None = None

    def start(self) -> None:
        if self.cuda:
            self._begin.record()
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        """Seconds since :meth:`start` (on CUDA: between the events, after waiting for them)."""
        if self._t0 is None:
            raise RuntimeError("StepTimer.stop() without start()")
        self._t0, t0 = None, self._t0
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            return self._begin.elapsed_time(self._end) / 1000.0
        return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# data path
# ---------------------------------------------------------------------------------------------
class HostMeta:
    """Host (numpy) copies of a store's per-trial metadata, so a step needs no device sync."""

    def __init__(self, store):
        def np_of(x):
            if x is None:
                return None
            if isinstance(x, torch.Tensor):
                return x.detach().cpu().numpy()
            return np.asarray(x)

        self.lengths = np_of(store.lengths).astype(np.int64)
        self.day = np_of(store.day).astype(np.int64)
        seq = getattr(store, "seq_class_ids", None)
        self.seq_class_ids = None if seq is None else np_of(seq)
        sl = getattr(store, "seq_len", None)
        self.seq_len = None if sl is None else np_of(sl).astype(np.int64)
        self.block_num = np_of(store.block_num)
        self.trial_num = np_of(store.trial_num)
        self.session = list(store.session)
        self.n = len(self.lengths)

    def has_labels(self) -> bool:
        return self.seq_class_ids is not None and self.seq_len is not None

    def trial_ids(self, rows: Iterable[int]) -> list[str]:
        return [f"{self.session[r]} block {int(self.block_num[r])} trial {int(self.trial_num[r])}"
                for r in rows]


@dataclasses.dataclass
class Batch:
    """One device batch, augmented/smoothed, with its host-side facts.

    The ``*_host`` fields are CPU copies of lengths that the host knows from the store's
    metadata (no device read); :func:`ctc_per_trial` hands them to ``ctc_loss``, which otherwise
    copies device lengths to the host (a synchronisation) every step."""
    features: torch.Tensor          # (B, T', C) after the transform
    n_time_steps: torch.Tensor      # (B,) after the cut, on the device
    labels: torch.Tensor | None     # (B, L) phoneme ids, zero padded
    label_lens: torch.Tensor | None  # (B,)
    day_idx: torch.Tensor           # (B,) on the device
    days_present: list[int]         # host
    rows: np.ndarray                # store rows (host)
    n_label_total: int              # host: sum of label lengths
    n_time_host: torch.Tensor | None = None     # (B,) CPU int64: n_time_steps after the cut
    input_lens_host: torch.Tensor | None = None  # (B,) CPU int32: CTC input lengths
    label_lens_host: torch.Tensor | None = None  # (B,) CPU int64: label lengths
    local_day_idx: torch.Tensor | None = None    # (B,) device int64: position in days_present

    @property
    def max_input_len(self) -> int | None:
        """Longest CTC input length of the batch (host int), None when unknown."""
        h = self.input_lens_host
        return None if h is None else (int(h.numpy().max()) if h.numel() else 0)

    @property
    def max_label_len(self) -> int | None:
        """Longest label of the batch (host int), None when unknown."""
        h = self.label_lens_host
        return None if h is None else (int(h.numpy().max()) if h.numel() else 0)


class DataPath:
    """Store rows -> device batch, through the reference or the fused augmentation.

    ``impl == "fused"`` with ``rng == "philox"``: ``augment_smooth_gather`` reads the trials
    straight from the packed store (on the device), or, when the store lives on the host,
    ``augment_smooth`` on the padded batch. Otherwise ``store.batch(rows)`` then
    :func:`fastbci.reference.transform_ref` with the configured random source.

    No host synchronisation: every length, maximum and day index is known on the host from the
    store's metadata (:class:`HostMeta`); the small per-batch tensors (rows, local day indices,
    lengths) reach a CUDA device through pinned memory with ``non_blocking=True``, and labels
    and label lengths are gathered on the device from a device-resident store.
    """

    def __init__(self, cfg: Mapping, device: torch.device, impl: str, rng: str):
        self.cfg = cfg
        self.device = device
        self.impl = impl
        self.rng = rng
        self.transforms = dict(cfg["dataset"]["data_transforms"])
        self.seed = int(cfg["dataset"]["seed"])
        self.fused = impl == "fused" and rng == "philox"
        self.amp = bool(cfg.get("use_amp", True)) and device.type == "cuda"
        self.out_dtype = torch.bfloat16 if (self.fused and self.amp) else None
        m = cfg.get("model") or {}
        self.patch = (int(m.get("patch_size", 0) or 0), int(m.get("patch_stride", 0) or 0)) \
            if "patch_size" in m else None

    def _to_dev(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)

    def _upload(self, a: np.ndarray) -> torch.Tensor:
        """A small host array on the device: through pinned memory with ``non_blocking`` on
        CUDA (no synchronisation; the caching host allocator keeps the pinned block until the
        copy has run), a fresh CPU tensor otherwise."""
        t = torch.from_numpy(np.ascontiguousarray(a).copy())
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _host_batch(self, store, rows: np.ndarray, t_max: int) -> torch.Tensor:
        """The zero-padded features of ``rows`` from a store that is not on the device, on the
        device. For CUDA they are gathered straight into a pinned buffer (from the caching host
        allocator, which keeps it until the copy has run) and copied with ``non_blocking``: a
        copy from pageable memory would wait for the device."""
        if self.device.type != "cuda" or store.features.device.type != "cpu":
            return self._to_dev(store.batch(rows)["input_features"])
        n = len(rows) * t_max * int(store.features.shape[1])
        buf = torch.empty(n, dtype=torch.float32, pin_memory=True)
        raw = store.batch(rows, out=buf)["input_features"]
        return raw.to(self.device, non_blocking=True)

    def _taps(self):
        if not self.transforms.get("smooth_data"):
            return None
        from fastbci.ops.augment import cached_smoothing_taps
        return cached_smoothing_taps(self.transforms, self.device, "DataPath")

    def batch(self, store, meta: HostMeta, rows: np.ndarray, *, mode: str, step: int = 0) -> Batch:
        """The device :class:`Batch` of store ``rows`` (in that order): augmented
        (``mode="train"``, random streams of batch ``step``) and smoothed, with its labels, day
        indices and the host copies of its lengths. ``meta`` is the store's :class:`HostMeta`."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            raise ValueError("DataPath.batch: empty list of trial rows")
        if rows.ndim != 1 or rows.min() < 0 or rows.max() >= meta.n:
            raise ValueError(f"DataPath.batch: rows must be a 1-D list of store rows in "
                             f"[0, {meta.n - 1}], got shape {rows.shape} with values in "
                             f"[{rows.min()}, {rows.max()}]")
        lengths = meta.lengths[rows]
        t_max = int(lengths.max())
        on_device_store = store.features.device == self.device
        rows_t = self._upload(rows) if on_device_store else None
        if self.fused:
            from fastbci.ops import augment as aug_op
            if on_device_store:
                feats, n_out = aug_op.augment_smooth_gather(
                    store.features, store.offsets, store.lengths, rows_t, self.transforms,
                    mode=mode, seed=self.seed, step=step, padding="same",
                    out_dtype=self.out_dtype, impl="fused", t_max=t_max)
            else:
                feats, n_out = aug_op.augment_smooth(
                    self._host_batch(store, rows, t_max), self._upload(lengths),
                    self.transforms, mode=mode,
                    seed=self.seed, step=step, padding="same", out_dtype=self.out_dtype,
                    impl="fused")
        else:
            from fastbci.reference import transform_ref
            raw = self._host_batch(store, rows, t_max) if not on_device_store \
                else store.batch(rows)["input_features"]
            feats, n_out = transform_ref(raw, self._upload(lengths), self.transforms,
                                         mode, rng=self.rng, seed=self.seed, step=step,
                                         taps=self._taps())
        n_out = self._to_dev(n_out)
        # the cut is the only change of length ('same' smoothing keeps T): read it off the shape
        cut = t_max - int(feats.shape[1])
        n_time_host = torch.from_numpy(lengths - cut)
        input_lens_host = None if self.patch is None else \
            input_lengths(n_time_host, self.patch[0], self.patch[1])
        labels = label_lens = label_lens_host = None
        n_label_total = 0
        if meta.has_labels():
            lens = meta.seq_len[rows]
            L = max(int(lens.max()), 1)
            seq = getattr(store, "seq_class_ids", None)
            seq_len = getattr(store, "seq_len", None)
            if on_device_store and seq is not None and seq_len is not None \
                    and seq.device == self.device and seq_len.device == self.device:
                # gathered on the device from the device-resident store: no host copy
                labels = seq.index_select(0, rows_t)[:, :L].to(torch.int64)
                label_lens = seq_len.index_select(0, rows_t).to(torch.int64)
            else:
                labels = self._upload(meta.seq_class_ids[rows, :L].astype(np.int64))
                label_lens = self._upload(lens.astype(np.int64))
            label_lens_host = torch.from_numpy(lens.astype(np.int64))
            n_label_total = int(lens.sum())
        days = meta.day[rows]
        present = np.unique(days)
        local = np.searchsorted(present, days).astype(np.int64)
        day_idx = store.day.index_select(0, rows_t) \
            if on_device_store and store.day.device == self.device else self._upload(days)
        return Batch(features=feats, n_time_steps=n_out, labels=labels, label_lens=label_lens,
                     day_idx=day_idx, days_present=[int(d) for d in present], rows=rows,
                     n_label_total=n_label_total, n_time_host=n_time_host,
                     input_lens_host=input_lens_host, label_lens_host=label_lens_host,
                     local_day_idx=self._upload(local))


def forward_logits(model, batch: Batch, cfg: Mapping, *, seed: int,
                   step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Model logits ``(B, P, K)`` and the CTC input lengths ``(B,)`` (int32, on the device) of a
    batch."""
    m = cfg["model"]
    extra = {} if batch.local_day_idx is None else {"local_day_idx": batch.local_day_idx}
    logits = model(batch.features, batch.day_idx, days_present=batch.days_present,
                   seed=seed, step=step, **extra)
    lens = input_lengths(batch.n_time_steps, int(m["patch_size"]), int(m["patch_stride"]))
    return logits, lens


def ctc_per_trial(logits: torch.Tensor, lens: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The official CTC loss per trial: blank 0, reduction 'none', zero_infinity False.

    ``ctc_loss`` needs its lengths on the host: when the batch carries host copies
    (``input_lens_host`` / ``label_lens_host``, equal to ``lens`` / ``label_lens`` by
    construction) they are used, which spares a device-to-host copy (a synchronisation);
    otherwise ``lens`` and ``batch.label_lens`` are passed as given."""
    in_lens = batch.input_lens_host if batch.input_lens_host is not None else lens
    tgt_lens = batch.label_lens_host if batch.label_lens_host is not None else batch.label_lens
    return F.ctc_loss(logits.log_softmax(2).permute(1, 0, 2), batch.labels, in_lens, tgt_lens,
                      blank=0, reduction="none", zero_infinity=False)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def val_batches(cfg: Mapping, store) -> list[np.ndarray]:
    """The official validation batches: per day in order, its trials in file order, in chunks of
    ``batch_size``; days whose ``dataset_probability_val`` is 0 are skipped."""
    from fastbci import data
    ds = cfg["dataset"]
    mask = [bool(p) for p in ds["dataset_probability_val"]]
    plan = data.val_batch_plan(store.trials_by_day, ds["batch_size"], day_mask=mask)
    return [np.asarray(plan[i]) for i in range(len(plan))]


def run_validation(model, store, meta: HostMeta, batches: Sequence[np.ndarray], cfg: Mapping,
                   data_path: DataPath, *, collect: bool = False) -> dict:
    """Evaluate ``model`` on ``batches`` of ``store`` (smoothing only, no augmentation).

    Returns ``loss`` (mean of the per-batch mean CTC losses, as official, or None without
    labels), ``per`` (total edits / total true phonemes), ``per_by_day`` ({day: PER}),
    ``edits_by_day`` / ``phonemes_by_day``, ``blank_fraction`` (blank frames among the valid
    frames of the greedy outputs), the raw sums behind them (``loss_sum`` and ``n_loss_batches``,
    ``blank_frames`` and ``frames``: what a distributed run adds up over ranks), ``n_trials`` and,
    with ``collect``, per-trial ``rows``, ``logits`` (list of (P_b, K) float32 arrays),
    ``tokens`` (list of int arrays). An empty ``batches`` gives zero sums and None / nan rates.

    No host synchronisation per batch: lengths and their maxima come from the store's metadata,
    decoding and edit distances run with host-known bounds and without range checks, and every
    sum (and, with ``collect``, every per-trial output) stays on the device until one read at
    the end.
    """
    from fastbci import metrics
    was_training = model.training
    model.eval()
    dev = data_path.device
    zero = torch.zeros((), dtype=torch.int64, device=dev)
    losses: list[torch.Tensor] = []
    edits_by_day: dict[int, torch.Tensor] = {}
    phon_by_day: dict[int, int] = {}
    blank = zero.clone()
    frames = zero.clone()
    kept: list[tuple] = []  # collect: (rows, logits, token width, host lengths, device ints)
    labelled = meta.has_labels()
    try:
        with torch.no_grad():
            for rows in batches:
                b = data_path.batch(store, meta, rows, mode="val")
                with _autocast(dev, data_path.amp):
                    logits, lens = forward_logits(model, b, cfg, seed=data_path.seed, step=0)
                    if labelled:
                        losses.append(ctc_per_trial(logits, lens, b).mean().float())
                lens64 = lens.to(torch.int64)
                ids = logits.argmax(dim=-1)
                valid = torch.arange(ids.shape[1], device=dev).unsqueeze(0) < lens64.unsqueeze(1)
                blank += ((ids == 0) & valid).sum()
                frames += valid.sum()
                width = b.max_input_len
                width = logits.shape[1] if width is None else max(0, min(width, logits.shape[1]))
                tokens, n_tok = metrics.greedy_decode(logits, lens64, width=width, check=False)
                if labelled:
                    ed = metrics.edit_distance(tokens, n_tok, b.labels, b.label_lens,
                                               max_hyp_len=width, max_ref_len=b.max_label_len,
                                               check=False)
                    day = int(meta.day[rows[0]])
                    edits_by_day[day] = edits_by_day.get(day, zero) + ed.sum()
                    phon_by_day[day] = phon_by_day.get(day, 0) + b.n_label_total
                if collect:
                    host_lens = b.input_lens_host
                    ints = [n_tok, tokens.reshape(-1)] + ([lens64] if host_lens is None else [])
                    kept.append((np.asarray(rows), logits.float(), tokens.shape[1],
                                 None if host_lens is None else host_lens.numpy(),
                                 torch.cat(ints)))
    finally:
        model.train(was_training)
    days = sorted(edits_by_day)
    # one read for every sum: counts are exact in float64 (far below 2**53), the mean loss is
    # the float32 mean of the float32 batch means, as official
    parts = [blank.to(torch.float64), frames.to(torch.float64)]
    parts += [edits_by_day[d].to(torch.float64) for d in days]
    if losses:
        stacked = torch.stack(losses)
        parts += [stacked.mean().to(torch.float64), stacked.double().sum()]
    host = torch.stack(parts).cpu().tolist()
    n_blank, n_frames = int(host[0]), int(host[1])
    day_edits = {d: int(v) for d, v in zip(days, host[2:2 + len(days)])}
    loss_mean, loss_sum = (host[-2], host[-1]) if losses else (None, 0.0)
    total_ph = sum(phon_by_day.values())
    res = {
        "loss": loss_mean,
        "per": (sum(day_edits.values()) / total_ph) if total_ph > 0 else None,
        "per_by_day": {d: (day_edits[d] / phon_by_day[d] if phon_by_day[d] else None) for d in days},
        "edits_by_day": day_edits,
        "phonemes_by_day": dict(phon_by_day),
        "blank_fraction": n_blank / n_frames if n_frames else float("nan"),
        "n_trials": int(sum(len(r) for r in batches)),
        "loss_sum": loss_sum,
        "n_loss_batches": len(losses),
        "blank_frames": n_blank,
        "frames": n_frames,
    }
    if collect:
        res.update(_collected_to_host(kept))
    return res


def _collected_to_host(kept: list[tuple]) -> dict[str, list]:
    """The per-trial outputs that :func:`run_validation` kept on the device, moved to the host
    in two transfers (one float32, one int64) and cut into per-trial arrays there."""
    out: dict[str, list] = {"rows": [], "logits": [], "tokens": []}
    if not kept:
        return out
    floats = torch.cat([lg.reshape(-1) for _, lg, _, _, _ in kept]).cpu().numpy()
    ints = torch.cat([iv for *_, iv in kept]).cpu().numpy()
    f_at = i_at = 0
    for rows, lg, width, host_lens, _ in kept:
        B, P, K = lg.shape
        lg_h = floats[f_at:f_at + B * P * K].reshape(B, P, K)
        f_at += B * P * K
        n_tok = ints[i_at:i_at + B]
        tok = ints[i_at + B:i_at + B + B * width].reshape(B, width)
        i_at += B + B * width
        if host_lens is None:
            host_lens = ints[i_at:i_at + B]
            i_at += B
        for i, r in enumerate(rows):
            out["rows"].append(int(r))
            out["logits"].append(lg_h[i, :int(host_lens[i])])
            out["tokens"].append(tok[i, :int(n_tok[i])])
    return out


def pack_trials(res: Mapping, meta: HostMeta) -> dict[str, np.ndarray]:
    """Per-trial outputs of :func:`run_validation` (``collect=True``), sorted by (session, block,
    trial) and packed for an ``.npz``: ``logits`` (sum of lengths, K) float32 with trial ``i`` at
    ``logits[offsets[i]:offsets[i + 1]]``, ``offsets``, ``lengths``, ``ids`` (0..N-1),
    ``tokens`` / ``n_tokens`` (greedy decoding, padded with -1), ``session``, ``day``,
    ``block_num``, ``trial_num`` and ``row`` (store row)."""
    rows = np.asarray(res["rows"], dtype=np.int64)
    order = np.lexsort((np.asarray(meta.trial_num[rows], dtype=np.int64),
                        np.asarray(meta.block_num[rows], dtype=np.int64), meta.day[rows]))
    rows = rows[order]
    logits = [res["logits"][i] for i in order]
    tokens = [res["tokens"][i] for i in order]
    n = len(rows)
    lengths = np.array([len(x) for x in logits], dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    k = logits[0].shape[1] if n else 0
    packed = np.concatenate(logits, axis=0).astype(np.float32) if n else np.zeros((0, k), np.float32)
    n_tok = np.array([len(t) for t in tokens], dtype=np.int64)
    tok = np.full((n, max(int(n_tok.max()) if n else 0, 1)), -1, dtype=np.int64)
    for i, t in enumerate(tokens):
        tok[i, :len(t)] = t
    return {"logits": packed, "offsets": offsets, "lengths": lengths, "ids": np.arange(n),
            "tokens": tok, "n_tokens": n_tok,
            "session": np.array([meta.session[r] for r in rows]), "day": meta.day[rows],
            "block_num": np.asarray(meta.block_num[rows]), "trial_num": np.asarray(meta.trial_num[rows]),
            "row": rows}


# ---------------------------------------------------------------------------------------------
# output directory
# ---------------------------------------------------------------------------------------------
def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def _dangerous_to_delete(p: Path) -> bool:
    p = p.resolve()
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    return p == Path(p.anchor) or p == home or p == cwd or p in cwd.parents


def prepare_output_dir(cfg: Mapping) -> Path | None:
    """Apply the output-directory policy; returns the checkpoint to resume from, or None.

    * ``fastbci.resume`` true: the latest resumable checkpoint of ``output_dir`` (an error if
      there is none); a path: that checkpoint.
    * otherwise an existing non-empty ``output_dir`` (or ``checkpoint_dir``) is an error that
      says how to proceed, unless ``fastbci.overwrite=true``, which deletes it first.
    """
    found = resume_path(cfg)
    if found is not None:
        return found
    out = Path(cfg["output_dir"])
    ckdir = Path(cfg["checkpoint_dir"])
    busy = [d for d in (out, ckdir) if _is_nonempty_dir(d)]
    if busy:
        if config_mod.get(cfg, "fastbci.overwrite", False):
            for d in busy:
                if _dangerous_to_delete(d):
                    raise ConfigError(f"fastbci.overwrite=true would delete {d.resolve()}, which is "
                                      "the file-system root, your home, the working directory or "
                                      "one of its parents: choose another output_dir")
                if d.exists():  # checkpoint_dir may sit inside output_dir, already removed
                    shutil.rmtree(d)
        else:
            has_resume = ckpt_io.find_resume_checkpoint(ckdir) is not None
            hint = ("fastbci.resume=true to continue it, " if has_resume else "")
            raise ConfigError(
                f"output directory {busy[0]} already exists and is not empty; pass {hint}"
                "fastbci.overwrite=true to replace it, or choose another output_dir=DIR "
                "(with checkpoint_dir=DIR/checkpoint)")
    return None


def resume_path(cfg: Mapping) -> Path | None:
    """The checkpoint ``fastbci.resume`` asks for (None when not resuming); no side effect."""
    out = Path(cfg["output_dir"])
    ckdir = Path(cfg["checkpoint_dir"])
    resume = config_mod.get(cfg, "fastbci.resume", False)
    if isinstance(resume, str) and resume.strip().lower() in ("", "false", "no", "none"):
        resume = False
    if isinstance(resume, str) and resume.strip().lower() in ("true", "yes", "latest"):
        resume = True
    if resume is True:
        found = ckpt_io.find_resume_checkpoint(ckdir)
        if found is None:
            raise ConfigError(
                f"fastbci.resume=true but there is no resumable checkpoint in {out} "
                f"(looked for {ckdir / ckpt_io.RESUME_NAME}); start a new run without "
                "fastbci.resume, or give the checkpoint path: fastbci.resume=PATH")
        return found
    if isinstance(resume, str):
        p = Path(resume)
        if not p.is_file():
            raise ConfigError(f"fastbci.resume: checkpoint file not found: {p}")
        return p
    return None


# ---------------------------------------------------------------------------------------------
# logging
# ---------------------------------------------------------------------------------------------
class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints through tqdm so the progress bar stays intact."""

    def emit(self, record):
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def make_logger(log_file: Path | None, console: bool = True) -> logging.Logger:
    log = logging.getLogger(LOGGER_NAME)
    for h in log.handlers[:]:
        log.removeHandler(h)
        h.close()
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter(fmt="%(asctime)s: %(message)s")
    if log_file is not None:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        log.addHandler(fh)
    if console:
        sh = _TqdmHandler(sys.stdout)
        sh.setFormatter(fmt)
        log.addHandler(sh)
    return log


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Official-recipe training with fastbci's data path, resume and diagnostics.

    ``Trainer(cfg).fit()`` runs the whole loop; ``rank`` / ``world_size`` are for a distributed
    wrapper (only rank 0 writes files, logs and shows progress: :attr:`is_main`).
    """

    def __init__(self, cfg: Mapping, *, rank: int = 0, world_size: int = 1, console: bool = True):
        self.cfg = copy.deepcopy(dict(cfg))
        if cfg.get("mode", "train") != "train":
            raise ConfigError(f"mode is {cfg.get('mode')!r}: the trainer needs mode=train "
                              "(use python -m fastbci.evaluate to evaluate a checkpoint)")
        self.rank = rank
        self.world_size = world_size
        self.console = console
        self.fb = dict(cfg.get("fastbci") or {})
        self.output_dir = Path(cfg["output_dir"])
        self.checkpoint_dir = Path(cfg["checkpoint_dir"])
        self.log: logging.Logger = logging.getLogger(LOGGER_NAME)
        self._stop_request: str | None = None
        self._setup_done = False

    # -- predicates ---------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """True on the process that owns side effects (files, logs, progress bar)."""
        return self.rank == 0

    def request_stop(self, reason: str = "interrupt") -> None:
        """Stop after the current batch, saving a resumable checkpoint (Ctrl-C calls this)."""
        self._stop_request = reason

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> "Trainer":
        """Output directory, logging, device, seeds, model, data, optimiser, resume."""
        if self._setup_done:
            return self
        cfg = self.cfg
        # rank 0 applies the output-directory policy; every rank needs the resume checkpoint
        resume_from = prepare_output_dir(cfg) if self.is_main else resume_path(cfg)
        self._t_start = time.time()
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            self.log = make_logger(self.output_dir / "train.log", console=self.console)
        self.device = self._choose_device()
        if self.device.type == "cuda":
            # as the official trainer: TF32 for float32 matmuls, deterministic cuDNN
            torch.cuda.set_device(self.device)
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.deterministic = True
        self.impl = resolve_impl(cfg, self.device)
        self.rng = self.fb.get("rng", "philox")
        self.log.info(f"Using device: {self.device} (impl {self.impl}, rng {self.rng})")
        if self.impl == "fused" and self.rng == "torch":
            self.log.info("fastbci.rng=torch draws in the official order, which only the reference "
                          "data path can do: the augmentation runs through the reference ops")

        # seeds, then the model (official order)
        seed_everything(int(cfg["seed"]))
        from fastbci.model import GRUDecoder
        self.model = GRUDecoder.from_config(cfg, impl=self.impl, rng=self.rng)
        total = sum(p.numel() for p in self.model.parameters())
        day = sum(p.numel() for n, p in self.model.named_parameters() if "day" in n)
        self.log.info(f"Model has {total:,} parameters ({day:,} day-specific, "
                      f"{100.0 * day / max(total, 1):.2f}%)")

        # data: stores loaded once, the official batch plan, then the dataset's re-seeding
        from fastbci import data
        ds = cfg["dataset"]
        t0 = time.time()
        # a store headed for the GPU is not pinned first (10.7 GB of page-locked memory for the
        # train split, only to be copied once); one that stays on the host is pinned then
        to_gpu = self.device.type == "cuda" and self.fb.get("store_device", "auto") != "cpu"
        pin = False if to_gpu else None
        self.train_store = data.TrialStore.from_config(cfg, "train", device="cpu", pin_memory=pin,
                                                       progress=self.is_main and self._progress_on())
        self.val_store = data.TrialStore.from_config(cfg, "val", device="cpu", pin_memory=pin,
                                                     progress=self.is_main and self._progress_on())
        for name, st in (("train", self.train_store), ("val", self.val_store)):
            if getattr(st, "skipped", None):
                self.log.info(f"{name}: skipped {len(st.skipped)} bad trial(s) "
                              f"(fastbci.bad_trial_policy=skip): " +
                              "; ".join(f"{s} {f} trial {t}: {r}" for s, f, t, r in st.skipped[:10]))
        # host metadata from the host stores (views, no device -> host copies), then placement
        self.train_meta = HostMeta(self.train_store)
        self.val_meta = HostMeta(self.val_store)
        self.train_store = self._place_store(self.train_store, "train")
        self.val_store = self._place_store(self.val_store, "val")
        if not self.train_meta.has_labels():
            raise ConfigError("the train split has no phoneme labels (seq_class_ids / seq_len)")
        n_batches = int(cfg["num_training_batches"])
        self.plan = data.train_batch_plan(self.train_store.trials_by_day, n_batches,
                                          ds["batch_size"], ds["days_per_batch"], ds["seed"],
                                          must_include_days=ds.get("must_include_days"))
        self.val_plan = val_batches(cfg, self.val_store) if self.val_meta.has_labels() else []
        # the official val dataset re-seeds numpy and torch with dataset.seed after the plan
        if int(ds["seed"]) != -1:
            np.random.seed(int(ds["seed"]))
            torch.manual_seed(int(ds["seed"]))
        self.log.info(f"Data: {self.train_meta.n} train trials, {self.val_meta.n} val trials "
                      f"({len(self.val_plan)} val batches), loaded in {time.time() - t0:.1f} s")
        if not self.val_plan:
            self.log.info("No validation trial: validation, best checkpoint and the collapse "
                          "watch are off")

        # trainability (official), device, optimiser, scheduler
        m = cfg["model"]
        for name, p in self.model.named_parameters():
            if not m["rnn_trainable"] and "gru" in name:
                p.requires_grad_(False)
            elif not m["input_network"]["input_trainable"] and "day" in name:
                p.requires_grad_(False)
        self.model.to(self.device)
        self.optimizer = schedule.make_optimizer(self.model, cfg, self.device)
        self.scheduler = schedule.make_scheduler(self.optimizer, cfg)
        self.data_path = DataPath(cfg, self.device, self.impl, self.rng)

        # run state
        self.start_batch = 0
        self.best_val_per = math.inf
        self.best_val_loss = math.inf
        self.val_steps_since_improvement = 0
        self.collapse_count = 0
        self.nonfinite_skipped = 0
        self.elapsed_before = 0.0
        self.train_losses = torch.full((n_batches,), float("nan"), dtype=torch.float32,
                                       device=self.device)
        self.val_history: list[dict] = []
        self._loader_draw_done = False
        self._resume_info: dict | None = None

        if cfg.get("init_from_checkpoint") and resume_from is None:
            self._init_from_checkpoint(cfg.get("init_checkpoint_path"))
        if resume_from is not None:
            self._resume(resume_from)
        if self.is_main:
            config_mod.dump(cfg, self.checkpoint_dir / "args.yaml")
            config_mod.dump(cfg, self.output_dir / "args.yaml")
        self._setup_done = True
        return self

    def _choose_device(self) -> torch.device:
        """The training device (``fastbci.device``); a distributed wrapper uses its rank's GPU."""
        return select_device(self.cfg, self.log)

    def _sum_across_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``values`` over all training processes: the identity in a
        single-process run (a distributed wrapper all-reduces)."""
        return values

    def _launch_hint(self) -> str:
        """The command that starts this kind of run (for messages)."""
        if self.world_size > 1:
            return "torchrun --nproc_per_node=N -m fastbci.train (any N dividing the batch)"
        return "python -m fastbci.train"

    def _progress_on(self) -> bool:
        return bool(self.fb.get("progress", True)) and self.console

    def _place_store(self, store, split: str):
        want = self.fb.get("store_device", "auto")
        if self.device.type != "cuda" or want == "cpu":
            return store
        nbytes = store.features.numel() * store.features.element_size()
        if want == "auto":
            free, _ = torch.cuda.mem_get_info(self.device)
            if nbytes > 0.5 * free:
                self.log.info(f"{split} store ({nbytes / 2**30:.1f} GiB) does not fit beside the "
                              f"model ({free / 2**30:.1f} GiB free): it stays in pinned host memory")
                return store.pin_memory()
        return store.to(self.device)

    def _init_from_checkpoint(self, path) -> None:
        if path in (None, "None", ""):
            raise ConfigError("init_from_checkpoint=true needs init_checkpoint_path=PATH")
        ck = ckpt_io.load(path, map_location=self.device)
        self.model.load_official_state_dict(ck["model_state_dict"])
        if "optimizer_state_dict" in ck:
            self.optimizer.load_state_dict(ck["optimizer_state_dict"])
        if "scheduler_state_dict" in ck:
            self.scheduler.load_state_dict(ck["scheduler_state_dict"])
            # fix: the official trainer restarts its loop at batch 0 here; continue instead
            self.start_batch = int(self.scheduler.last_epoch)
        self.best_val_per = float(ck.get("val_PER", math.inf))
        self.best_val_loss = float(ck.get("val_loss", math.inf))
        self.log.info(f"Initialised from checkpoint {path}; continuing at batch {self.start_batch} "
                      "(random streams restart: not an exact resume; use fastbci.resume for that)")

    def _resume(self, path: Path) -> None:
        ck = ckpt_io.load(path, map_location=self.device)
        st = ckpt_io.resume_state_of(ck, path)
        old_cfg = st.get("config") or {}
        ignore = ("fastbci.resume", "fastbci.overwrite", "fastbci.progress", "fastbci.plot",
                  "num_training_batches", "output_dir", "checkpoint_dir")
        a = _flat(old_cfg)
        b = _flat(self.cfg)
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in ignore)
        if changed:
            self.log.info("Resuming with configuration changes (the run will differ from an "
                          "uninterrupted one): " + ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
                                                             for k in changed))
        self.model.load_official_state_dict(ck["model_state_dict"])
        self.optimizer.load_state_dict(ck["optimizer_state_dict"])
        self.scheduler.load_state_dict(ck["scheduler_state_dict"])
        self.start_batch = int(st["next_batch"])
        self.best_val_per = float(st.get("best_val_PER", math.inf))
        self.best_val_loss = float(st.get("best_val_loss", math.inf))
        self.val_steps_since_improvement = int(st.get("val_steps_since_improvement", 0))
        self.collapse_count = int(st.get("collapse_count", 0))
        self.nonfinite_skipped = int(st.get("nonfinite_skipped", 0))
        self.elapsed_before = float(st.get("elapsed", 0.0))
        self.val_history = list(st.get("val_history", []))
        losses = torch.as_tensor(np.asarray(st.get("train_losses", []), dtype=np.float32))
        n = min(len(losses), len(self.train_losses))
        self.train_losses[:n] = losses[:n].to(self.device)
        ckpt_io.restore_rng_state(st["rng"])
        self._resume_info = st
        self._loader_draw_done = True
        if self.is_main:
            self._truncate_metrics(self.start_batch)
        self.log.info(f"Resumed from {path} at batch {self.start_batch}")

    # -- checkpoints --------------------------------------------------------------------------
    def resume_state(self, next_batch: int) -> dict:
        return {
            "next_batch": int(next_batch),
            "rng": ckpt_io.capture_rng_state(),
            "best_val_PER": self.best_val_per,
            "best_val_loss": self.best_val_loss,
            "val_steps_since_improvement": self.val_steps_since_improvement,
            "collapse_count": self.collapse_count,
            "nonfinite_skipped": self.nonfinite_skipped,
            "elapsed": self.elapsed_before + (time.time() - self._t_start),
            "train_losses": self.train_losses[:next_batch].cpu().numpy(),
            "val_history": self.val_history,
            "config": self.cfg,
        }

    def save_checkpoint(self, name: str, next_batch: int, val_per=None, val_loss=None) -> Path | None:
        """Write ``checkpoint_dir/name`` (official format + resume state); rank 0 only."""
        if not self.is_main:
            return None
        path = self.checkpoint_dir / name
        ck = ckpt_io.build_checkpoint(self.model.official_state_dict(), self.optimizer,
                                      self.scheduler, val_per, val_loss,
                                      self.resume_state(next_batch))
        ckpt_io.atomic_save(ck, path)
        config_mod.dump(self.cfg, self.checkpoint_dir / "args.yaml")
        return path

    # -- metrics file ---------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"

    def _write_metrics(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_metrics(self, next_batch: int) -> None:
        """Drop records past the resume point (they are recomputed, identically)."""
        p = self.metrics_path
        if not p.is_file():
            return
        keep = []
        for line in p.read_text().splitlines():
            try:
                if json.loads(line)["batch"] < next_batch:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        p.write_text("".join(k + "\n" for k in keep))

    # -- one step -----------------------------------------------------------------------------
    def _emulate_loader_draw(self) -> None:
        """rng=torch: each official DataLoader iterator draws its base seed from torch's CPU
        generator; mirror that draw so the official random streams line up."""
        if self.rng == "torch":
            torch.empty((), dtype=torch.int64).random_()

    def clip_gradients(self) -> torch.Tensor:
        """Clip the global gradient norm to ``grad_norm_clip_value`` (no host read); returns the
        norm before clipping (computed also when clipping is off, where the official one is
        undefined)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = float(self.cfg["grad_norm_clip_value"])
        if clip > 0:
            return torch.nn.utils.clip_grad_norm_(params, max_norm=clip,
                                                  error_if_nonfinite=False, foreach=True)
        return torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)

    def apply_update(self, finite: bool) -> None:
        """Optimiser and scheduler step; for a non-finite step, skip the update but advance the
        schedule so that the rate stays tied to the batch index."""
        if finite:
            self.optimizer.step()
            self.scheduler.step()
            return
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            self.scheduler.step()

    def train_step(self, k: int) -> dict:
        """One optimisation step on training batch ``k``; returns device tensors (no sync) plus
        ``finite`` (the only host read: the non-finite check of loss and gradient)."""
        cfg = self.cfg
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        rows = np.asarray(self.plan[k])
        batch = self.data_path.batch(self.train_store, self.train_meta, rows, mode="train", step=k)
        with _autocast(self.device, self.data_path.amp):
            logits, lens = forward_logits(self.model, batch, cfg, seed=self.data_path.seed, step=k)
            per_trial = ctc_per_trial(logits, lens, batch)
            loss = per_trial.mean()
        loss.backward()
        grad_norm = self.clip_gradients()
        finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))
        lr = self.optimizer.param_groups[-1]["lr"]
        self.apply_update(finite)
        self.train_losses[k] = loss.detach().float()
        return {"loss": loss.detach(), "grad_norm": grad_norm.detach(), "per_trial": per_trial.detach(),
                "logits": logits.detach(), "lens": lens, "batch": batch, "finite": finite, "lr": lr}

    def _nonfinite_message(self, k: int, out: dict) -> str:
        # the whole batch when the step says so (a distributed step gathers it for the diagnosis)
        batch: Batch = out.get("diag_batch", out["batch"])
        pt = out.get("diag_per_trial", out["per_trial"]).float().cpu()
        bad = (~torch.isfinite(pt)).nonzero().flatten().tolist()
        feats_bad = (~torch.isfinite(batch.features.float())).flatten(1).any(1).cpu().tolist()
        meta = self.train_meta
        if bad:
            what = f"non-finite CTC loss in {len(bad)} of {len(pt)} trial(s)"
            idx = bad
        else:
            what = (f"finite loss {float(out['loss']):.4f} but a non-finite gradient norm "
                    f"({float(out['grad_norm'])}): an overflow in the backward pass")
            idx = list(range(len(pt)))
        lines = [f"Non-finite loss or gradient at batch {k}: {what}; days in the batch: "
                 + ", ".join(f"{d} ({self.cfg['dataset']['sessions'][d]})" for d in batch.days_present)]
        for i in idx[:16]:
            r = int(batch.rows[i])
            flag = " [input features hold NaN/inf]" if feats_bad[i] else ""
            lines.append(f"  day {int(meta.day[r])}: {meta.trial_ids([r])[0]} "
                         f"(store row {r}, T={int(meta.lengths[r])}, phonemes "
                         f"{int(meta.seq_len[r])}){flag}")
        if len(idx) > 16:
            lines.append(f"  ... and {len(idx) - 16} more")
        if bad:
            lines.append("  A CTC loss is infinite when a trial's output is shorter than its "
                         "phoneme sequence (with repeats): check n_time_steps vs seq_len, "
                         "patch_size/patch_stride and random_cut.")
        lines += self._doctor_lines()
        return "\n".join(lines)

    def _doctor_lines(self) -> list[str]:
        try:
            from fastbci import doctor
            findings = doctor.assess(self.cfg)
        except Exception as e:  # the diagnosis must not hide the original problem
            return [f"  (fastbci.doctor could not assess the configuration: {e})"]
        risky = [f for f in findings if f.severity in ("severe", "warning")]
        if not risky:
            return ["  No configuration difference from the official recipe is known to cause "
                    f"this (fastbci.doctor: {len(findings)} informational finding(s))."]
        out = ["  Configuration differences from the official recipe that carry a risk "
               "(fastbci.doctor, most severe first):"]

        def short(v):
            r = repr(v)
            return r if len(r) <= 60 else r[:57] + "..."

        for f in risky:
            out.append(f"    [{f.severity}] {f.key} = {short(f.value)} (official {short(f.official)}): "
                       f"{f.impact}")
        if len(findings) > len(risky):
            out.append(f"    (+{len(findings) - len(risky)} informational; run python -m "
                       "fastbci.doctor CONFIG for the full table)")
        return out

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> dict:
        """Train from the current batch to ``num_training_batches``.

        ``stop_after``: stop (as on Ctrl-C: resumable checkpoint, status ``"interrupted"``) once
        this many batches have run in this call; for wall-time-limited jobs and tests.
        Returns a summary: ``status`` (``finished`` | ``early_stopped`` | ``collapsed`` |
        ``nonfinite`` | ``interrupted``), ``last_batch``, ``best_val_PER``, ``best_val_loss``,
        ``nonfinite_skipped``, ``train_losses`` (numpy, per batch), ``message``.
        """
        self.setup()
        cfg = self.cfg
        n_batches = int(cfg["num_training_batches"])
        log_every = max(1, int(cfg["batches_per_train_log"]))
        val_every = max(1, int(cfg["batches_per_val_step"]))
        ck_every = int(self.fb.get("checkpoint_every", 0) or 0)
        warmup = max(int(cfg["lr_warmup_steps"]), int(cfg["lr_warmup_steps_day"]))
        self._t_start = time.time()
        status, message = "finished", ""
        last = self.start_batch - 1
        old_handler = self._install_sigint()
        bar = self._progress_bar(n_batches)
        if not self._loader_draw_done:
            self._emulate_loader_draw()
            self._loader_draw_done = True
        ran = 0
        timer = StepTimer(self.device)
        try:
            for k in range(self.start_batch, n_batches):
                timed = k % log_every == 0
                if timed:
                    timer.start()
                out = self.train_step(k)
                last = k
                if not out["finite"]:
                    msg = self._nonfinite_message(k, out)
                    if self.fb.get("nonfinite_policy", "stop") == "skip":
                        self.nonfinite_skipped += 1
                        self.log.warning(msg + f"\n  fastbci.nonfinite_policy=skip: batch {k} "
                                         f"skipped ({self.nonfinite_skipped} so far)")
                    else:
                        self.log.error(msg + "\n  Training stopped (fastbci.nonfinite_policy=stop;"
                                       " use =skip to skip such batches)")
                        raise NonFiniteError(msg)
                if timed:
                    self._train_log(k, out, timer.stop(), bar)
                if bar is not None:
                    bar.update(1)
                is_val = bool(self.val_plan) and (k % val_every == 0 or k == n_batches - 1)
                stop_reason = None
                if is_val:
                    stop_reason = self._validation_step(k, warmup)
                ran += 1
                if is_val or (ck_every > 0 and (k + 1) % ck_every == 0):
                    self.save_checkpoint(ckpt_io.RESUME_NAME, k + 1)
                if stop_reason is not None:
                    status, message = stop_reason
                    break
                if self._stop_request is None and stop_after is not None and ran >= stop_after \
                        and k < n_batches - 1:
                    self._stop_request = "stop_after"
                if self._stop_request is not None and k < n_batches - 1:
                    p = self.save_checkpoint(ckpt_io.RESUME_NAME, k + 1)
                    status = "interrupted"
                    message = (f"Interrupted after batch {k}; resumable checkpoint saved to {p}. "
                               f"Resume with: {self._launch_hint()} CONFIG "
                               f"output_dir={self.output_dir} checkpoint_dir={self.checkpoint_dir}"
                               f" fastbci.resume=true")
                    self.log.info(message)
                    break
        except NonFiniteError as e:
            status, message = "nonfinite", str(e)
        except KeyboardInterrupt:
            status = "interrupted"
            p = ckpt_io.find_resume_checkpoint(self.checkpoint_dir)
            message = ("Interrupted in the middle of a batch: nothing saved now; " +
                       (f"the last resumable checkpoint is {p} (resume with fastbci.resume=true)"
                        if p else "no resumable checkpoint exists yet"))
            self.log.info(message)
        finally:
            if bar is not None:
                bar.close()
            self._restore_sigint(old_handler)

        if status in ("finished", "early_stopped") and cfg.get("save_final_model"):
            last_per = self.val_history[-1]["per"] if self.val_history else None
            last_loss = self.val_history[-1]["loss"] if self.val_history else None
            p = self.save_checkpoint(f"final_checkpoint_batch_{last}", last + 1, last_per, last_loss)
            self.log.info(f"Saved final model to {p}")
        elapsed = self.elapsed_before + time.time() - self._t_start
        self.log.info(f"Best avg val PER achieved: {_fmt(self.best_val_per, '.5f')}")
        self.log.info(f"Total training time: {elapsed / 60:.2f} minutes (status: {status})")
        if self.nonfinite_skipped:
            self.log.info(f"Skipped {self.nonfinite_skipped} batch(es) with a non-finite loss or gradient")
        if self.is_main and self.fb.get("plot", True):
            try:
                plot_curves(self.metrics_path, self.output_dir / "training_curves.png",
                            self.train_losses.cpu().numpy())
            except Exception as e:  # a plot must never fail a finished run
                self.log.info(f"Could not draw the curves: {e}")
        return {
            "status": status, "message": message, "last_batch": last,
            "best_val_PER": None if math.isinf(self.best_val_per) else self.best_val_per,
            "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
            "nonfinite_skipped": self.nonfinite_skipped,
            "train_losses": self.train_losses.cpu().numpy(),
            "val_history": list(self.val_history),
            "seconds": elapsed,
        }

    def _train_log(self, k: int, out: dict, step_seconds: float, bar) -> None:
        from fastbci import metrics
        loss = float(out["loss"])
        gnorm = float(out["grad_norm"])
        logits, lens, batch = out["logits"], out["lens"], out["batch"]
        lens64 = lens.to(torch.int64)
        width = batch.max_input_len
        width = logits.shape[1] if width is None else max(0, min(width, logits.shape[1]))
        tokens, n_tok = metrics.greedy_decode(logits, lens64, width=width, check=False)
        ed = metrics.edit_distance(tokens, n_tok, batch.labels, batch.label_lens,
                                   max_hyp_len=width, max_ref_len=batch.max_label_len,
                                   check=False)
        valid = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0) < lens64.unsqueeze(1)
        blank = ((logits.argmax(dim=-1) == 0) & valid).sum()
        # edits, true phonemes, blank frames, valid frames: summed over the ranks' shares
        stats = torch.stack([ed.sum().to(torch.float64), blank.to(torch.float64),
                             valid.sum().to(torch.float64)])
        stats = torch.cat([stats, torch.tensor([float(batch.n_label_total)], dtype=torch.float64,
                                               device=stats.device)])
        edits, n_blank, n_frames, n_labels = self._sum_across_ranks(stats).tolist()
        bf = n_blank / n_frames if n_frames else float("nan")
        per = edits / n_labels if n_labels else None
        lr = out["lr"]
        seconds = self.elapsed_before + time.time() - self._t_start
        self.log.info(f"Train batch {k}: loss: {loss:.2f} grad norm: {gnorm:.2f} lr: {lr:.3g} "
                      f"PER: {_fmt(per)} blank: {bf:.3f} time: {step_seconds:.3f}")
        self._write_metrics({"batch": k, "split": "train", "loss": loss, "per": per,
                             "per_by_day": {}, "blank_fraction": bf, "lr": lr,
                             "grad_norm": gnorm, "seconds": seconds})
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", gnorm=f"{gnorm:.2f}", refresh=False)

    def validate(self, collect: bool = False) -> dict:
        """:func:`run_validation` of the model on the whole validation plan (``collect``: keep
        the per-trial outputs, on the process that writes files)."""
        return run_validation(self.model, self.val_store, self.val_meta, self.val_plan, self.cfg,
                              self.data_path, collect=collect and self.is_main)

    def _gather_val_trials(self, res: Mapping) -> Mapping | None:
        """The per-trial validation outputs (``rows``, ``logits``, ``tokens``) of every trial, on
        the process that writes files (None elsewhere, or when they were not collected)."""
        return res if "logits" in res else None

    def _validation_step(self, k: int, warmup: int):
        """Validate after batch ``k``; returns ``(status, message)`` to stop, else None."""
        cfg = self.cfg
        self.log.info(f"Running validation after training batch: {k}")
        t0 = time.time()
        self._emulate_loader_draw()
        keep_logits = bool(cfg.get("save_val_metrics", True) and cfg.get("save_val_logits", True))
        res = self.validate(collect=keep_logits)
        dt = time.time() - t0
        sessions = cfg["dataset"]["sessions"]
        per, loss, bf = res["per"], res["loss"], res["blank_fraction"]
        self.log.info(f"Val batch {k}: PER (avg): {_fmt(per)} CTC Loss (avg): {_fmt(loss)} "
                      f"blank: {bf:.3f} time: {dt:.3f}")
        if cfg.get("log_individual_day_val_PER", True):
            for d, p in res["per_by_day"].items():
                self.log.info(f"{sessions[d]} val PER: {_fmt(p)}")
        lr = self.optimizer.param_groups[-1]["lr"]
        record = {"batch": k, "split": "val", "loss": loss, "per": per,
                  "per_by_day": {sessions[d]: p for d, p in res["per_by_day"].items()},
                  "blank_fraction": bf, "lr": lr,
                  "seconds": self.elapsed_before + time.time() - self._t_start}
        self._write_metrics(record)
        self.val_history.append(record)

        new_best = False
        if per is not None and per < self.best_val_per:
            self.log.info(f"New best val PER {_fmt(self.best_val_per)} --> {per:.4f}")
            self.best_val_per, self.best_val_loss = per, loss
            new_best = True
        elif per is not None and per == self.best_val_per and loss < self.best_val_loss:
            self.log.info(f"New best val loss {self.best_val_loss:.4f} --> {loss:.4f}")
            self.best_val_loss = loss
            new_best = True
        if new_best:
            self.val_steps_since_improvement = 0
            if cfg.get("save_best_checkpoint", True):
                p = self.save_checkpoint(ckpt_io.BEST_NAME, k + 1, per, loss)
                self.log.info(f"Saved best checkpoint: {p}")
            if cfg.get("save_val_metrics", True):
                trials = self._gather_val_trials(res) if keep_logits else None
                if self.is_main:
                    with open(self.checkpoint_dir / "val_metrics.json", "w") as f:
                        json.dump(record, f, indent=1)
                    if trials is not None:
                        np.savez(self.checkpoint_dir / "val_logits.npz",
                                 **pack_trials(trials, self.val_meta))
        else:
            self.val_steps_since_improvement += 1
        if cfg.get("save_all_val_steps"):
            self.save_checkpoint(f"checkpoint_batch_{k}", k + 1, per, loss)

        # blank-collapse watch (after warm-up)
        if self.fb.get("collapse_watch", True) and k >= warmup and not math.isnan(bf):
            if bf >= float(self.fb.get("collapse_blank_fraction", 0.98)):
                self.collapse_count += 1
            else:
                self.collapse_count = 0
            patience = int(self.fb.get("collapse_patience", 3))
            if self.collapse_count >= patience:
                msg = "\n".join([
                    f"Blank collapse: the validation outputs have been {100 * bf:.1f}% blank "
                    f"(threshold fastbci.collapse_blank_fraction="
                    f"{self.fb.get('collapse_blank_fraction', 0.98)}) for {self.collapse_count} "
                    f"validation(s) after warm-up; stopping at batch {k}.",
                    *self._doctor_lines(),
                    "  Known causes (RECIPE.md s8): weaker augmentation (white_noise_std, "
                    "constant_offset_std), lower lr_max, longer warm-up and smaller batches than "
                    "official. Turn the watch off with fastbci.collapse_watch=false."])
                self.log.error(msg)
                return "collapsed", msg
        if cfg.get("early_stopping") and \
                self.val_steps_since_improvement >= int(cfg["early_stopping_val_steps"]):
            msg = (f"Overall validation PER has not improved in {cfg['early_stopping_val_steps']} "
                   f"validation steps. Stopping training early at batch: {k}")
            self.log.info(msg)
            return "early_stopped", msg
        return None

    # -- progress and signals -------------------------------------------------------------------
    def _progress_bar(self, n_batches: int):
        if not (self.is_main and self._progress_on()):
            return None
        from tqdm import tqdm
        return tqdm(total=n_batches, initial=self.start_batch, file=sys.stderr, unit="batch",
                    dynamic_ncols=True, desc="train", smoothing=0.05)

    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._stop_request is not None:
                raise KeyboardInterrupt
            self.log.info("Ctrl-C: stopping after this batch and saving a resumable checkpoint "
                          "(press Ctrl-C again to stop at once without saving)")
            self.request_stop("interrupt")

        try:
            return signal.signal(signal.SIGINT, handler)
        except ValueError:  # pragma: no cover - not the main interpreter
            return None

    @staticmethod
    def _restore_sigint(old) -> None:
        if old is not None:
            signal.signal(signal.SIGINT, old)


# ---------------------------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------------------------
def plot_curves(metrics_path: Path, png_path: Path, train_losses: np.ndarray | None = None) -> Path | None:
    """Loss (train, val) and validation PER against the batch, from ``metrics.jsonl``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    if Path(metrics_path).is_file():
        for line in Path(metrics_path).read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            (val if r.get("split") == "val" else train).append(r)
    if not train and not val and (train_losses is None or not np.isfinite(train_losses).any()):
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train_losses is not None and np.isfinite(train_losses).any():
        x = np.arange(len(train_losses))
        ok = np.isfinite(train_losses)
        ax1.plot(x[ok], train_losses[ok], color="tab:blue", alpha=0.25, lw=0.8, label="train (batch)")
        w = max(1, int(ok.sum()) // 100)
        if w > 1:
            sm = np.convolve(train_losses[ok], np.ones(w) / w, mode="valid")
            ax1.plot(x[ok][w - 1:], sm, color="tab:blue", lw=1.5, label=f"train (mean of {w})")
    elif train:
        ax1.plot([r["batch"] for r in train], [r["loss"] for r in train], color="tab:blue", label="train")
    if val:
        ax1.plot([r["batch"] for r in val], [r["loss"] for r in val], "o-", color="tab:red", ms=3,
                 label="validation")
        ax2.plot([r["batch"] for r in val], [100 * r["per"] if r["per"] is not None else np.nan
                                             for r in val], "o-", color="tab:red", ms=3)
    ax1.set_xlabel("batch")
    ax1.set_ylabel("CTC loss")
    ax1.set_yscale("log")
    ax1.legend()
    if val:
        pers = [100 * r["per"] for r in val if r["per"] is not None]
        if pers and max(pers) > 100:  # the first validations can exceed 100%: keep the scale readable
            ax2.set_ylim(0, 100)
            ax2.set_title("(PER above 100% clipped)", fontsize=9)
    ax2.set_xlabel("batch")
    ax2.set_ylabel("validation PER (%)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
USAGE = """usage: python -m fastbci.train CONFIG [key=value ...]

Train the Brain-to-Text '25 baseline phoneme decoder with the official recipe.
CONFIG is a YAML file (e.g. configs/official.yaml, configs/demo.yaml); key=value pairs override
it (dotted keys, YAML values), e.g. num_training_batches=10000 dataset.batch_size=48.
Useful fastbci.* keys: resume=true|PATH, overwrite=true, impl=auto|fused|reference,
rng=philox|torch, progress=false, checkpoint_every=N, nonfinite_policy=stop|skip.
Several GPUs / nodes: torchrun --nproc_per_node=N -m fastbci.train CONFIG [key=value ...]
(dataset.batch_size is the global batch; see docs/distributed.md).
Exit status: 0 done, 2 configuration error, 3 blank collapse, 4 non-finite, 130 interrupted."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else EXIT_CONFIG
    from fastbci import distributed
    try:
        env = distributed.env_from_os()
    except ConfigError as e:
        print(f"fastbci.train: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if env is not None and env.world_size > 1:
        return distributed.main(argv, env)

    def run() -> int:
        cfg = config_mod.load_config(argv[0], argv[1:])
        return exit_code_of(Trainer(cfg).fit()["status"])

    return run_cli(run)


def run_cli(fn, *, report: bool = True, prog: str = "fastbci.train") -> int:
    """Run ``fn()`` (returning an exit status) and turn the errors a user can fix into a message
    on stderr, prefixed with ``prog``, and exit status 2 (``report=False``: no message, for
    processes other than rank 0). ``FASTBCI_DEBUG=1`` re-raises data and model errors with their
    traceback."""
    def say(msg: str) -> None:
        if report:
            print(msg, file=sys.stderr)

    try:
        return fn()
    except ConfigError as e:
        say(f"{prog}: configuration error: {e}")
        return EXIT_CONFIG
    except ckpt_io.CheckpointError as e:
        say(f"{prog}: checkpoint error: {e}")
        return EXIT_CONFIG
    except (FileNotFoundError, ValueError) as e:
        # data-layer and model errors carry a message that names the file / trial / key
        if os.environ.get("FASTBCI_DEBUG"):
            raise
        say(f"{prog}: error: {e}\n(set FASTBCI_DEBUG=1 for the traceback)")
        return EXIT_CONFIG


def exit_code_of(status: str) -> int:
    """The CLI exit status of a :meth:`Trainer.fit` summary status."""
    if status == "collapsed":
        return EXIT_COLLAPSE
    if status == "nonfinite":
        return EXIT_NONFINITE
    if status == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK


def _exit_worker(code: int) -> None:
    """End a ``torchrun`` worker process: flush, then leave without interpreter finalisation.
    Gloo's C++ threads can still hold Python objects when the interpreter tears itself down,
    which aborts the process (SIGABRT, "terminate called without an active exception") after a
    successful run and makes torchrun report a failure; the process group is already destroyed
    and every file closed by then (distributed.main)."""
    import logging
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_worker(_code)
    sys.exit(_code)
