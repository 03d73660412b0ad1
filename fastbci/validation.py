"""Validation: the official validation batches, the sync-free evaluation of a model on them,
the rates computed once (:class:`ValResult`), the best-checkpoint rule and early stopping, and
the packing of per-trial outputs for an ``.npz``.

Every sum stays on the device until one read at the end; a distributed run adds its ranks'
sums with the parallelism's ``all_sum`` before that read, so every world size computes the same
formulas: PER = total edits / total true phonemes, loss = mean of the per-batch mean CTC losses
(a float64 mean of float32 batch means, as the official ``np.mean`` of ``loss.item()`` values).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fastbci import metrics
from fastbci.data.batch import Batch, BatchBuilder
from fastbci.devices import autocast, to_device
from fastbci.ops import patch_input_lengths


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The model inside torch.compile's and DistributedDataParallel's wrappers."""
    while True:
        inner = getattr(net, "_orig_mod", None) or getattr(net, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return net
        net = inner


def forward_logits(net, batch: Batch, *, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, P, K)`` of the model (``net``: it, or a wrapper around it) and the CTC input
    lengths ``(B,)`` (int32, on the device)."""
    logits = net(batch.features, batch.day_idx, days_present=batch.days_present,
                 local_day_idx=batch.local_day_idx, seed=seed, step=step)
    model = unwrap(net)
    # a compiled forward does not read days_present: hand the days over for the backward
    model.note_batch_days(batch.days_present)
    return logits, patch_input_lengths(batch.n_time_steps, model.patch_size, model.patch_stride)


def ctc_per_trial(logits: torch.Tensor, lens: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The official CTC loss per trial: blank 0, reduction 'none', zero_infinity False.

    ``ctc_loss`` needs its lengths on the host: the batch's host copies (equal to ``lens`` and
    ``label_lens`` by construction) spare a device-to-host copy; a batch without them (None)
    passes the device lengths."""
    in_lens = batch.input_lens_host if batch.input_lens_host is not None else lens
    tgt_lens = batch.label_lens_host if batch.label_lens_host is not None else batch.label_lens
    return F.ctc_loss(logits.log_softmax(2).permute(1, 0, 2), batch.labels, in_lens, tgt_lens,
                      blank=0, reduction="none", zero_infinity=False)


def val_batches(cfg: Mapping, store) -> list[np.ndarray]:
    """The official validation batches: per day in order, its trials in file order, in chunks of
    ``batch_size``; days whose ``dataset_probability_val`` is 0 are skipped."""
    from fastbci import data
    ds = cfg["dataset"]
    mask = [bool(p) for p in ds["dataset_probability_val"]]
    plan = data.val_batch_plan(store.trials_by_day, ds["batch_size"], day_mask=mask)
    return [np.asarray(plan[i]) for i in range(len(plan))]


@dataclasses.dataclass
class ValTrials:
    """Per-trial outputs of a validation: store rows, logits ``(P_i, K)`` float32 arrays over
    each trial's CTC input length, greedy tokens (int64 arrays)."""
    rows: list[int]
    logits: list[np.ndarray]
    tokens: list[np.ndarray]

    @staticmethod
    def merge(parts: Sequence["ValTrials | None"]) -> "ValTrials | None":
        merged = ValTrials([], [], [])
        for p in parts:
            if p is not None:
                merged.rows += p.rows
                merged.logits += p.logits
                merged.tokens += p.tokens
        return merged if merged.rows else None


@dataclasses.dataclass
class ValResult:
    """The sums of one validation and the rates computed from them (once, here)."""
    loss_sum: float                   # sum of the per-batch mean CTC losses
    n_loss_batches: int
    edits_by_day: dict[int, int]
    phonemes_by_day: dict[int, int]
    blank_frames: int
    frames: int
    n_trials: int
    trials: ValTrials | None = None   # with ``collect``, on the process that writes files

    @property
    def loss(self) -> float | None:
        return self.loss_sum / self.n_loss_batches if self.n_loss_batches else None

    @property
    def per(self) -> float | None:
        total = sum(self.phonemes_by_day.values())
        return metrics.phoneme_error_rate(sum(self.edits_by_day.values()), total) if total else None

    @property
    def per_by_day(self) -> dict[int, float | None]:
        return {d: (metrics.phoneme_error_rate(e, self.phonemes_by_day[d])
                    if self.phonemes_by_day[d] else None)
                for d, e in self.edits_by_day.items()}

    @property
    def blank_fraction(self) -> float:
        return self.blank_frames / self.frames if self.frames else float("nan")


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def run_validation(model, store, batches: Sequence[np.ndarray], builder: BatchBuilder, *,
                   collect: bool = False,
                   share: Callable[[list], list] | None = None,
                   all_sum: Callable[[torch.Tensor], torch.Tensor] = _identity) -> ValResult:
    """Evaluate ``model`` on ``batches`` of ``store`` (smoothing only, no augmentation).

    ``share`` picks this process's batches of the (global) list, ``all_sum`` adds a device
    vector over processes (both the identity in one process). The days reported are those of
    ``batches``. With ``collect``, the per-trial outputs of this process's batches come back in
    :attr:`ValResult.trials`. No host read per batch: one read of all sums at the end.
    """
    dev = builder.device
    days = sorted({int(store.day_np[b[0]]) for b in batches})
    mine = list(batches) if share is None else share(list(batches))
    n_days = store.n_days
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    losses: list[torch.Tensor] = []
    edits = torch.zeros(n_days, dtype=torch.float64, device=dev)
    phonemes = np.zeros(n_days, dtype=np.float64)
    blank, frames = zero.clone(), zero.clone()
    kept: list[tuple] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for rows in mine:
                b = builder.batch(store, rows, mode="val")
                with autocast(dev, builder.amp):
                    logits, lens = forward_logits(model, b, seed=0, step=0)
                    if store.has_labels:
                        losses.append(ctc_per_trial(logits, lens, b).mean().float())
                st = metrics.greedy_stats(logits, lens, b.labels, b.label_lens,
                                          width=b.max_input_len, max_label_len=b.max_label_len)
                blank += st.blank
                frames += st.frames
                if st.edits is not None:
                    edits[int(b.days[0])] += st.edits.sum()
                    phonemes[int(b.days[0])] += b.n_label_total
                if collect:
                    kept.append((b, logits.float(), st))
    finally:
        model.train(was_training)
    loss_sum = torch.stack(losses).double().sum() if losses else zero
    # device sums, then the host-known counts (uploaded without a synchronisation)
    host_known = to_device(np.concatenate([[float(len(losses))], phonemes]), dev)
    vec = torch.cat([torch.stack([loss_sum, blank, frames]), edits, host_known])
    host = all_sum(vec).cpu().tolist()
    ed, ph = host[3:3 + n_days], host[4 + n_days:]
    return ValResult(loss_sum=host[0], n_loss_batches=int(round(host[3 + n_days])),
                     edits_by_day={d: int(round(ed[d])) for d in days if store.has_labels},
                     phonemes_by_day={d: int(round(ph[d])) for d in days if store.has_labels},
                     blank_frames=int(round(host[1])), frames=int(round(host[2])),
                     n_trials=int(sum(len(r) for r in batches)),
                     trials=_collected_to_host(kept) if collect else None)


def _collected_to_host(kept: list[tuple[Batch, torch.Tensor, metrics.GreedyStats]]) -> ValTrials:
    """The per-trial outputs kept on the device, moved to the host in two transfers (one
    float32, one int64) and cut into per-trial arrays there."""
    out = ValTrials([], [], [])
    if not kept:
        return out
    floats = torch.cat([lg.reshape(-1) for _, lg, _ in kept]).cpu().numpy()
    ints = torch.cat([torch.cat([st.n_tokens, st.tokens.reshape(-1)]) for *_, st in kept])
    ints = ints.cpu().numpy()
    f_at = i_at = 0
    for b, lg, st in kept:
        B, P, K = lg.shape
        width = st.tokens.shape[1]
        lg_h = floats[f_at:f_at + B * P * K].reshape(B, P, K)
        f_at += B * P * K
        n_tok = ints[i_at:i_at + B]
        tok = ints[i_at + B:i_at + B + B * width].reshape(B, width)
        i_at += B + B * width
        lens = b.input_lens_host.numpy()
        for i, r in enumerate(b.rows):
            out.rows.append(int(r))
            out.logits.append(lg_h[i, :int(lens[i])])
            out.tokens.append(tok[i, :int(n_tok[i])])
    return out


def pack_trials(trials: ValTrials, store) -> dict[str, np.ndarray]:
    """Per-trial outputs sorted by (session, block, trial) and packed for an ``.npz``:
    ``logits`` (sum of lengths, K) float32 with trial ``i`` at ``logits[offsets[i]:offsets[i +
    1]]``, ``offsets``, ``lengths``, ``ids`` (0..N-1), ``tokens`` / ``n_tokens`` (greedy
    decoding, padded with -1), ``session``, ``day``, ``block_num``, ``trial_num`` and ``row``
    (store row)."""
    rows = np.asarray(trials.rows, dtype=np.int64)
    order = np.lexsort((np.asarray(store.trial_num_np[rows], dtype=np.int64),
                        np.asarray(store.block_num_np[rows], dtype=np.int64), store.day_np[rows]))
    rows = rows[order]
    logits = [trials.logits[i] for i in order]
    tokens = [trials.tokens[i] for i in order]
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
            "session": np.array([store.session[r] for r in rows]), "day": store.day_np[rows],
            "block_num": np.asarray(store.block_num_np[rows]),
            "trial_num": np.asarray(store.trial_num_np[rows]), "row": rows}


def is_new_best(per: float | None, loss: float | None, best_per: float, best_loss: float) -> bool:
    """The official best-checkpoint rule: a lower PER, ties broken by a lower loss."""
    if per is None:
        return False
    return per < best_per or (per == best_per and loss is not None and loss < best_loss)


def should_stop_early(cfg: Mapping, since_improvement: int) -> bool:
    """Official early stopping: ``early_stopping`` and ``early_stopping_val_steps``
    validations without improvement."""
    return bool(cfg["early_stopping"]) and since_improvement >= int(cfg["early_stopping_val_steps"])

