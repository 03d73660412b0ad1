"""Device batches for training and validation: :class:`Batch` and its :class:`BatchBuilder`.

The builder turns TrialStore rows into an augmented (train) or smoothed (val) device batch
through the fused kernels or the reference ops, with every length, maximum and day index taken
from the store's host arrays, so that building a batch never reads the device. Small per-batch
arrays reach a CUDA device through pinned memory without blocking (:func:`to_device`).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import torch

from fastbci.devices import to_device
from fastbci.ops import Augmentation, augment_smooth, augment_smooth_gather, patch_input_lengths, resolve
from fastbci.ops.day_projection import present_days


@dataclasses.dataclass
class Batch:
    """One device batch, augmented or smoothed, with the host-side facts of its trials.

    The ``*_host`` fields are CPU copies of lengths known from the store's metadata:
    ``ctc_loss`` gets them, sparing the device-to-host copy (a synchronisation) it would
    otherwise make every step."""
    features: torch.Tensor             # (B, T', C) after the transform
    n_time_steps: torch.Tensor         # (B,) after the cut, on the device
    labels: torch.Tensor | None        # (B, L) phoneme ids, zero padded
    label_lens: torch.Tensor | None    # (B,)
    day_idx: torch.Tensor              # (B,) on the device
    local_day_idx: torch.Tensor        # (B,) on the device: position in days_present
    days_present: list[int]            # host: the distinct days, sorted
    rows: np.ndarray                   # host: store rows
    days: np.ndarray                   # host: day of each trial
    n_label_total: int                 # host: sum of label lengths
    n_time_host: torch.Tensor          # (B,) CPU int64: n_time_steps after the cut
    input_lens_host: torch.Tensor      # (B,) CPU int32: CTC input lengths
    label_lens_host: torch.Tensor | None = None  # (B,) CPU int64: label lengths

    @property
    def max_input_len(self) -> int:
        """Longest CTC input length of the batch (host int)."""
        h = self.input_lens_host
        return int(h.numpy().max()) if h.numel() else 0

    @property
    def max_label_len(self) -> int | None:
        """Longest label of the batch (host int), None without labels."""
        h = self.label_lens_host
        return None if h is None else (int(h.numpy().max()) if h.numel() else 0)

    def select(self, lo: int, hi: int, *, min_time: int = 1) -> "Batch":
        """Trials ``[lo, hi)`` of the batch, with the time padding that none of them needs
        trimmed (at least ``min_time`` steps kept, e.g. the patch size).

        Exact: the smoothing already ran over the whole padded batch, and every output frame a
        trial's loss and decoding read depends only on its steps before ``n_time_steps`` (the
        day layer is per step, the patches lie inside the trial, the GRU is causal)."""
        if not 0 <= lo < hi <= len(self.rows):
            raise ValueError(f"Batch.select: trials [{lo}, {hi}) are not inside a batch of "
                             f"{len(self.rows)} trials")
        t_now = self.features.shape[1]
        need = int(self.n_time_host.numpy()[lo:hi].max())
        keep = min(t_now, max(need, int(min_time)))
        feats = self.features[lo:hi]
        if keep < t_now:
            feats = feats[:, :keep].contiguous()
        labels = label_lens = label_lens_host = None
        n_label_total = 0
        if self.labels is not None:
            label_lens_host = self.label_lens_host[lo:hi]
            lens = label_lens_host.numpy()
            labels = self.labels[lo:hi, :max(int(lens.max()), 1)]
            label_lens = self.label_lens[lo:hi]
            n_label_total = int(lens.sum())
        days = self.days[lo:hi]
        present, local = present_days(days)
        return Batch(features=feats, n_time_steps=self.n_time_steps[lo:hi], labels=labels,
                     label_lens=label_lens, day_idx=self.day_idx[lo:hi],
                     local_day_idx=to_device(local, self.day_idx.device), days_present=present,
                     rows=self.rows[lo:hi], days=days, n_label_total=n_label_total,
                     n_time_host=self.n_time_host[lo:hi],
                     input_lens_host=self.input_lens_host[lo:hi], label_lens_host=label_lens_host)


class BatchBuilder:
    """Store rows -> device :class:`Batch`, augmented (train) or smoothed (val) through the
    augment op: ``augment_smooth_gather`` reads the trials straight from a store on the
    builder's device; a host store beside a GPU gathers into pinned memory, uploads without
    blocking and ``augment_smooth`` runs on the GPU. The op's dispatch decides fused or
    reference (``impl``); ``rng="torch"`` (the official draw order) is the reference's alone.

    Args:
        aug: the transform values; seed: their Philox key (``dataset.seed``); device; impl:
            passed to the op; rng: ``"philox"`` or ``"torch"``; patch: ``(patch_size,
            patch_stride)`` for the CTC input lengths; amp: bf16 features from the fused kernel
            under CUDA autocast (``use_amp``).
    """

    def __init__(self, aug: Augmentation, device: torch.device, *, seed: int, impl: str = "auto",
                 rng: str = "philox", patch: tuple[int, int] = (14, 4), amp: bool = False):
        self.aug = aug
        self.device = torch.device(device)
        self.impl = impl
        self.rng = rng
        self.seed = int(seed)
        self.patch = (int(patch[0]), int(patch[1]))
        self.amp = bool(amp) and self.device.type == "cuda"
        probe = torch.empty(0, device=self.device)
        self.fused = rng == "philox" and resolve("augment", probe, impl) == "fused"
        self.out_dtype = torch.bfloat16 if (self.fused and self.amp) else None

    @classmethod
    def from_config(cls, cfg: Mapping, device: torch.device, impl: str | None = None) -> "BatchBuilder":
        """The builder of a configuration (``impl``: default ``fastbci.impl``)."""
        m = cfg["model"]
        return cls(Augmentation.from_transforms(cfg["dataset"]["data_transforms"]), device,
                   seed=int(cfg["dataset"]["seed"]), impl=impl or cfg["fastbci"]["impl"],
                   rng=cfg["fastbci"]["rng"], patch=(int(m["patch_size"]), int(m["patch_stride"])),
                   amp=bool(cfg["use_amp"]))

    def _host_batch(self, store, rows: np.ndarray, t_max: int) -> torch.Tensor:
        """The zero-padded features of ``rows`` of a host store, on the device: gathered straight
        into a pinned buffer and copied without blocking (a copy from pageable memory would wait
        for the device)."""
        n = len(rows) * t_max * store.n_features
        buf = torch.empty(n, dtype=torch.float32, pin_memory=True)
        return store.gather(rows, out=buf).to(self.device, non_blocking=True)

    def _features(self, store, rows: np.ndarray, rows_t, lengths: np.ndarray, mode: str,
                  step: int) -> tuple[torch.Tensor, torch.Tensor]:
        t_max = int(lengths.max())
        common = dict(mode=mode, seed=self.seed, step=step, padding="same",
                      out_dtype=self.out_dtype, rng=self.rng,
                      impl=self.impl if self.rng == "philox" else "reference")
        if rows_t is not None:
            return augment_smooth_gather(store.features, store.offsets, store.lengths, rows_t,
                                         self.aug, t_max=t_max, **common)
        return augment_smooth(self._host_batch(store, rows, t_max), to_device(lengths, self.device),
                              self.aug, **common)

    def _labels(self, store, rows: np.ndarray, rows_t, lens: np.ndarray):
        """Labels ``(B, L)`` int64 and label lengths on the device, gathered on the device from
        a device-resident store, else uploaded from its host arrays (``lens``: the host
        label lengths of ``rows``)."""
        L = max(int(lens.max()), 1)
        if rows_t is not None and self.device.type != "cpu":
            return (store.seq_class_ids.index_select(0, rows_t)[:, :L].to(torch.int64),
                    store.seq_len.index_select(0, rows_t).to(torch.int64))
        return (to_device(store.seq_class_ids_np[rows, :L].astype(np.int64), self.device),
                to_device(lens, self.device))

    def batch(self, store, rows: Sequence[int] | np.ndarray, *, mode: str, step: int = 0) -> Batch:
        """The device :class:`Batch` of store ``rows`` (in that order): augmented
        (``mode="train"``, random streams of batch ``step``) and smoothed, with its labels, day
        indices and the host copies of its lengths."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            raise ValueError("BatchBuilder.batch: empty list of trial rows")
        if rows.ndim != 1 or rows.min() < 0 or rows.max() >= store.n_trials:
            raise ValueError(f"BatchBuilder.batch: rows must be a 1-D list of store rows in "
                             f"[0, {store.n_trials - 1}], got shape {rows.shape} with values in "
                             f"[{rows.min()}, {rows.max()}]")
        lengths = store.lengths_np[rows]
        on_device = store.device == self.device
        rows_t = to_device(rows, self.device) if on_device else None
        feats, n_out = self._features(store, rows, rows_t, lengths, mode, step)
        # the cut is the only change of length ('same' smoothing keeps T): read it off the shape
        n_time_host = torch.from_numpy(lengths - (int(lengths.max()) - int(feats.shape[1])))
        labels = label_lens = label_lens_host = None
        n_label_total = 0
        if store.has_labels:
            lens = store.seq_len_np[rows].astype(np.int64)
            labels, label_lens = self._labels(store, rows, rows_t, lens)
            label_lens_host = torch.from_numpy(lens)
            n_label_total = int(lens.sum())
        days = store.day_np[rows]
        present, local = present_days(days)
        day_idx = store.day.index_select(0, rows_t) if on_device else to_device(days, self.device)
        return Batch(features=feats, n_time_steps=n_out.to(self.device, non_blocking=True),
                     labels=labels, label_lens=label_lens, day_idx=day_idx,
                     local_day_idx=to_device(local, self.device), days_present=present,
                     rows=rows, days=days, n_label_total=n_label_total, n_time_host=n_time_host,
                     input_lens_host=patch_input_lengths(n_time_host, *self.patch),
                     label_lens_host=label_lens_host)
