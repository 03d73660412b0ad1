"""A new recording day for a trained model: one more day layer, fitted to a few sentences of the
new session while everything else stays frozen (docs/calibration.md).

The new layer starts from the existing day whose layer gives the lowest CTC loss on the
calibration sentences (or a given day), then trains alone with the official augmentation and the
official optimiser settings of the day layers (AdamW, ``lr_max_day`` warming up over the first
tenth of the steps, then cosine to ``lr_min_day``; ``epsilon``, betas and ``weight_decay_day``
as configured) for a fixed budget of steps, stopping early on a held-out part of the sentences
when there are enough of them. Without labels, rounds of pseudo-labels stand in: decode, keep
the trials the model is most confident about, train on them.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from fastbci.data.batch import BatchBuilder
from fastbci.data.load import PackedSplit, SessionSource, length_rule_of
from fastbci.data.store import TrialStore
from fastbci.data.t15 import PAD_LEN
from fastbci.errors import ConfigError, FastbciError
from fastbci.loading import load_weights
from fastbci.model import GRUDecoder
from fastbci.ops import Augmentation
from fastbci.schedule import lr_multiplier
from fastbci.validation import ValResult, ctc_per_trial, forward_logits, run_validation

__all__ = ["CalibrationError", "Budget", "NewDay", "new_day", "choose_init_day", "train_layer",
           "train_only_day", "pseudo_label", "evaluate_per", "layer_of", "set_layer"]


class CalibrationError(FastbciError, ValueError):
    """A session that cannot calibrate this model (channels, too few or too short trials)."""
    kind = "calibration error"


@dataclasses.dataclass(frozen=True)
class Budget:
    """The fixed training budget of one calibration: ``steps`` optimiser steps on batches of
    ``batch_size`` calibration trials; with a held-out part, its CTC loss every ``eval_every``
    steps keeps the best layer and stops after ``patience`` evaluations without improvement."""
    steps: int = 120
    batch_size: int = 16
    eval_every: int = 20
    patience: int = 3
    heldout_fraction: float = 0.2
    min_heldout_sentences: int = 10  # fewer calibration sentences: no held-out part


@dataclasses.dataclass
class NewDay:
    """The model with its new day layer and the session's trials."""
    cfg: dict               # the configuration with the new session in dataset.sessions
    model: GRUDecoder
    day: int                # the new layer's day index
    session: str
    store: TrialStore | None  # the session's calibration trials, day ``day`` (None: no sentence)
    labelled: bool
    replaced: bool            # the session was a day of the model already (--replace)
    # with unlabelled_rest: every trial of the file, read without labels (the first
    # ``store.n_trials`` are the labelled sentences, the others the unlabelled rest)
    whole: TrialStore | None = None


def _session_name(path: Path) -> str:
    """The session of ``path``: its folder's name when it looks like one (``t15.2025.04.13``),
    else the file's stem."""
    name = path.parent.name
    return name if name.startswith(("t15.", "t12.")) else path.stem


def extended_config(cfg: Mapping, session: str, replace: bool) -> tuple[dict, int]:
    """``cfg`` with ``session`` as one more day (or, with ``replace``, the day it already is);
    returns it and the day index."""
    import copy
    cfg = copy.deepcopy(dict(cfg))
    ds = cfg["dataset"]
    if session in ds["sessions"]:
        if not replace:
            raise ConfigError(
                f"session {session} is already day {ds['sessions'].index(session)} of the model: "
                "pass --replace to calibrate its layer again (the old one is overwritten)")
        return cfg, ds["sessions"].index(session)
    ds["sessions"] = list(ds["sessions"]) + [session]
    ds["dataset_probability_val"] = list(ds["dataset_probability_val"]) + [1]
    return cfg, len(ds["sessions"]) - 1


def load_session(cfg: Mapping, path: Path, day: int, n: int | None, labelled: bool,
                 split: str = "train") -> TrialStore:
    """The first ``n`` usable trials of one session file (all when None) as day ``day`` of a
    store for ``cfg`` (its model's channels, patching and CTC lengths checked, errors naming the
    file and trial). ``labelled=False`` reads no labels (an unlabelled session)."""
    ds = cfg["dataset"]
    sources = [SessionSource(d, s, None) for d, s in enumerate(ds["sessions"])]
    sources[day] = SessionSource(day, ds["sessions"][day], path)
    store = TrialStore.from_sources(
        sources, split if labelled else "test", neural_dim=int(ds["neural_dim"]),
        n_classes=int(ds["n_classes"]), policy="fail", length_rule=length_rule_of(cfg, "train"))
    have = store.n_trials
    if have == 0 or (n is not None and have < n):
        raise CalibrationError(f"{path} has {have} usable trial(s); "
                               + (f"{n} were asked for (--sentences)" if n else "at least 1 is needed"))
    if n is not None and n < have:
        store = TrialStore(_first(store.data, n), "cpu")
    return store


def _first(split: PackedSplit, n: int) -> PackedSplit:
    """The first ``n`` trials of a split (the session's calibration sentences)."""
    end = int(split.offsets[n])
    packed = torch.cat([split.packed[:end], torch.zeros_like(split.packed[:1])])
    cut = {name: (None if getattr(split, name) is None else getattr(split, name)[:n])
           for name in ("day", "n_time_steps", "block_num", "trial_num", "trial_index",
                        "seq_class_ids", "seq_len", "transcriptions")}
    return dataclasses.replace(split, packed=packed, offsets=split.offsets[:n + 1], **cut,
                               session=split.session[:n], sentence_label=split.sentence_label[:n],
                               trials_by_day=tuple(t[t < n] for t in split.trials_by_day))


def with_labels(store: TrialStore, labels: Sequence[np.ndarray]) -> TrialStore:
    """``store`` with ``labels[i]`` (phoneme ids) as trial ``i``'s label (pseudo-labels)."""
    ids = np.zeros((store.n_trials, PAD_LEN), dtype=np.int32)
    for i, lab in enumerate(labels):
        ids[i, :len(lab)] = lab
    lens = torch.tensor([len(lab) for lab in labels], dtype=torch.int64)
    return TrialStore(dataclasses.replace(store.data, seq_class_ids=torch.from_numpy(ids),
                                          seq_len=lens, transcriptions=torch.zeros_like(
                                              torch.from_numpy(ids))), store.device)


def layer_of(model: GRUDecoder, day: int) -> tuple[torch.Tensor, torch.Tensor]:
    return model.day_weights[day].detach().clone(), model.day_biases[day].detach().clone()


def set_layer(model: GRUDecoder, day: int, layer: tuple[torch.Tensor, torch.Tensor]) -> None:
    with torch.no_grad():
        model.day_weights[day].copy_(layer[0])
        model.day_biases[day].copy_(layer[1])


def new_day(cfg: Mapping, state: Mapping, path: Path, *, n: int | None, replace: bool,
            labelled: bool, checkpoint: str | Path = "the checkpoint",
            unlabelled_rest: bool = False) -> NewDay:
    """The model of ``cfg`` with the weights ``state`` (the ``model_state_dict`` of
    ``checkpoint``) plus a day layer for the session of ``path`` (a copy of day 0's for now),
    and the session's trials: its first ``n`` (all when None); with ``unlabelled_rest`` also
    every trial of the file read without labels (``NewDay.whole``), of which those after the
    first ``n`` are the unlabelled rest (there must be at least one)."""
    session = _session_name(path)
    new_cfg, day = extended_config(cfg, session, replace)
    store = None if n == 0 else load_session(new_cfg, path, day, n, labelled)
    whole = None
    if unlabelled_rest:
        whole = load_session(new_cfg, path, day, None, labelled=False)
        have = 0 if store is None else store.n_trials
        if store is not None and not np.array_equal(whole.lengths_np[:have], store.lengths_np):
            raise CalibrationError(f"{path}: its first {have} trials are not the same read with "
                                   "and without labels")
        if whole.n_trials <= have:
            raise CalibrationError(f"{path} has {whole.n_trials} usable trial(s): none is left "
                                   f"unlabelled after the first {have} (--sentences, "
                                   "--unlabelled-rest)")
    model = GRUDecoder.from_config(new_cfg)
    sd = dict(state)
    if f"day_weights.{day}" not in sd:
        sd[f"day_weights.{day}"] = sd["day_weights.0"].clone()
        sd[f"day_biases.{day}"] = sd["day_biases.0"].clone()
    load_weights(model, {"model_state_dict": sd}, checkpoint)
    train_only_day(model, day)
    return NewDay(new_cfg, model, day, session, store, labelled,
                  replaced=day < len(cfg["dataset"]["sessions"]), whole=whole)


def train_only_day(model: GRUDecoder, day: int) -> None:
    """Every parameter of ``model`` frozen but day ``day``'s layer (weights and bias)."""
    mine = (f"day_weights.{day}", f"day_biases.{day}")
    for name, p in model.named_parameters():
        p.requires_grad_(name in mine)


def _chunks(rows: np.ndarray, size: int) -> list[np.ndarray]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def evaluate_per(nd: NewDay, store: TrialStore, rows: np.ndarray, builder: BatchBuilder,
                 collect: bool = False) -> ValResult:
    """The model on ``rows`` of ``store`` (validation semantics: smoothing only)."""
    batches = _chunks(np.asarray(rows, dtype=np.int64), int(nd.cfg["dataset"]["batch_size"]))
    return run_validation(nd.model, store, batches, builder, collect=collect)


def choose_init_day(nd: NewDay, rows: np.ndarray, builder: BatchBuilder,
                    candidates: Sequence[int]) -> tuple[int, dict[int, float]]:
    """The candidate day whose layer fits the calibration trials best, and every day's score:
    with labels the lowest CTC loss on ``rows``; without, the most confident outputs (the lowest
    mean over frames of ``-log`` of the largest class probability)."""
    scores = {}
    for d in candidates:
        set_layer(nd.model, nd.day, layer_of(nd.model, d))
        if nd.labelled:
            scores[d] = float(evaluate_per(nd, nd.store, rows, builder).loss)
        else:
            scores[d] = float(-np.log(_confidence(nd, builder)[1]).mean())
    return min(scores, key=scores.get), scores


def _confidence(nd: NewDay, builder: BatchBuilder, store: TrialStore | None = None,
                rows: np.ndarray | None = None) -> tuple[list[np.ndarray], np.ndarray, list]:
    """The log-probabilities, confidence (mean over frames of the largest class probability)
    and greedy tokens of ``rows`` of ``store`` (default every trial of the session), in
    ascending row order."""
    store = nd.store if store is None else store
    rows = np.arange(store.n_trials) if rows is None else np.asarray(rows, dtype=np.int64)
    res = evaluate_per(nd, store, rows, builder, collect=True)
    order = np.argsort(np.asarray(res.trials.rows))
    logp = [torch.from_numpy(res.trials.logits[i]).log_softmax(-1).numpy() for i in order]
    conf = np.array([float(np.exp(lp.max(-1)).mean()) for lp in logp])
    return logp, conf, [res.trials.tokens[i] for i in order]


def _optimizer(layer: list[torch.nn.Parameter], cfg: Mapping, steps: int):
    opt = torch.optim.AdamW(layer, lr=float(cfg["lr_max_day"]),
                            betas=(float(cfg["beta0"]), float(cfg["beta1"])),
                            eps=float(cfg["epsilon"]), weight_decay=float(cfg["weight_decay_day"]))
    min_ratio = float(cfg["lr_min_day"]) / float(cfg["lr_max_day"])
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_multiplier(s, min_ratio, steps, warmup))
    return opt, sched


class _Trainable:
    """What the optimiser moves: the new layer itself, or with ``rank`` a change of its weights of
    at most that rank from where they start (``W0 + A B``, ``A`` zero at first; the bias free);
    ``pull`` weights an L2 penalty on the change (weights and bias) from the starting layer."""

    def __init__(self, model: GRUDecoder, day: int, *, pull: float = 0.0, rank: int | None = None,
                 seed: int = 0):
        self.W, self.b = model.day_weights[day], model.day_biases[day]
        self.W0, self.b0 = self.W.detach().clone(), self.b.detach().clone()
        self.pull, self.rank = float(pull), rank
        self.params = [self.W, self.b]
        if rank:
            n_in, n_out = self.W.shape
            gen = torch.Generator().manual_seed(seed)
            self.A = torch.zeros(n_in, rank, device=self.W.device, requires_grad=True)
            self.B = (torch.randn(rank, n_out, generator=gen) / n_out ** 0.5).to(
                self.W.device).requires_grad_(True)
            self.params = [self.A, self.B, self.b]

    def penalty(self) -> torch.Tensor | float:
        if not self.pull:
            return 0.0
        dW = self.A @ self.B if self.rank else self.W - self.W0
        return self.pull * ((dW ** 2).sum() + ((self.b - self.b0) ** 2).sum())

    def backward_done(self) -> None:
        """With ``rank``: the weights' gradient through ``W = W0 + A B`` to ``A`` and ``B``."""
        if self.rank and self.W.grad is not None:
            G = self.W.grad
            for t, g in ((self.A, G @ self.B.detach().T), (self.B, self.A.detach().T @ G)):
                t.grad = g if t.grad is None else t.grad + g
            self.W.grad = None

    def step_done(self) -> None:
        """With ``rank``: the layer's weights follow ``A`` and ``B``."""
        if self.rank:
            with torch.no_grad():
                self.W.copy_(self.W0 + self.A @ self.B)


def train_layer(nd: NewDay, store: TrialStore, train_rows: np.ndarray, held_rows: np.ndarray,
                builder: BatchBuilder, budget: Budget, seed: int, steps: int | None = None,
                say: Callable[[str], None] = lambda s: None,
                weights: np.ndarray | None = None, first_step: int = 0, pull: float = 0.0,
                rank: int | None = None) -> dict:
    """Train the new layer on ``train_rows`` of ``store`` (labelled), stopping early on
    ``held_rows`` when there are any; the best layer is left in the model. ``weights``: a loss
    weight per store row (the batch loss is the mean of weight x CTC loss; default 1 each);
    ``first_step``: the augmentation and dropout streams start at this step (a later round of
    the same calibration draws new noise); ``pull``: an L2 penalty of this weight on the change
    from the layer this call starts from; ``rank``: the weights change by at most this rank
    (``W0 + A B``). Returns the steps run and the held-out losses."""
    steps = budget.steps if steps is None else steps
    if weights is not None and len(weights) != store.n_trials:
        raise ValueError(f"train_layer: {len(weights)} weights for a store of {store.n_trials} trials")
    w = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float32))
    model, cfg = nd.model, nd.cfg
    layer = _Trainable(model, nd.day, pull=pull, rank=rank, seed=seed)
    opt, sched = _optimizer(layer.params, cfg, steps)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # the GRU's inter-layer dropout (and the torch-rng day dropout)
    size = min(budget.batch_size, len(train_rows))
    best, best_loss, since, history, k = layer_of(model, nd.day), float("inf"), 0, [], 0
    clip = float(cfg["grad_norm_clip_value"])
    for k in range(steps):
        rows = rng.choice(train_rows, size=size, replace=len(train_rows) < size)
        model.train()
        batch = builder.batch(store, rows, mode="train", step=first_step + k)
        logits, lens = forward_logits(model, batch, seed=seed, step=first_step + k)
        per_trial = ctc_per_trial(logits, lens, batch)
        loss = (per_trial if w is None else per_trial * w[rows].to(per_trial.device)).mean()
        opt.zero_grad(set_to_none=True)
        (loss + layer.penalty()).backward()
        layer.backward_done()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(layer.params, clip)
        opt.step()
        layer.step_done()
        sched.step()
        if len(held_rows) and ((k + 1) % budget.eval_every == 0 or k == steps - 1):
            held = float(evaluate_per(nd, store, held_rows, builder).loss)
            history.append({"step": k + 1, "heldout_loss": held})
            say(f"  step {k + 1}: held-out CTC loss {held:.4f}")
            if held < best_loss:
                best, best_loss, since = layer_of(model, nd.day), held, 0
            else:
                since += 1
                if since >= budget.patience:
                    break
    if len(held_rows):
        set_layer(model, nd.day, best)
    return {"steps": k + 1 if steps else 0, "heldout": history,
            "best_heldout_loss": None if not history else best_loss}


def pseudo_label(nd: NewDay, builder: BatchBuilder, keep: float,
                 decode: Callable[[np.ndarray], np.ndarray] | None = None, *,
                 store: TrialStore | None = None, rows: np.ndarray | None = None
                 ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Decode ``rows`` of ``store`` (default every trial of the session) with the current layer
    and keep the fraction ``keep`` of them the model is most confident about (mean over frames
    of the largest class probability), among those whose decode is a label CTC can train on
    (not empty, and no more frames needed than the trial has after the largest random cut).
    ``decode(log_probs) -> ids``: the word decoder's phonemes; default greedy CTC. Returns the
    kept store rows (sorted), a label per store row (empty where not decoded) and a confidence
    per store row (NaN where not decoded). ``store`` is read without its labels."""
    store = nd.store if store is None else store
    rows = np.arange(store.n_trials, dtype=np.int64) if rows is None else np.sort(
        np.asarray(rows, dtype=np.int64))
    labels = [np.zeros(0, dtype=np.int64) for _ in range(store.n_trials)]
    conf = np.full(store.n_trials, np.nan)
    if not len(rows):
        return rows, labels, conf
    logp, c, tokens = _confidence(nd, builder, store, rows)
    fits = _ctc_fits(nd.cfg)
    usable = []
    for r, lp, tok, cr in zip(rows, logp, tokens, c):
        labels[r] = np.asarray(decode(lp) if decode else tok, dtype=np.int64)
        conf[r] = cr
        if len(labels[r]) and fits(labels[r], int(store.lengths_np[r])):
            usable.append(int(r))
    n_keep = max(1, int(round(keep * len(usable)))) if usable else 0
    kept = np.array(sorted(sorted(usable, key=lambda i: -conf[i])[:n_keep]), dtype=np.int64)
    return kept, labels, conf


def _ctc_fits(cfg: Mapping) -> Callable[[np.ndarray, int], bool]:
    """``fits(label, n_steps)``: a trial of ``n_steps`` steps has the frames CTC needs for
    ``label`` (one per phoneme and a blank between repeats) after the largest random cut."""
    m = cfg["model"]
    size, stride = int(m["patch_size"]), int(m["patch_stride"])
    cut = max(int(cfg["dataset"]["data_transforms"]["random_cut"]) - 1, 0)

    def fits(label: np.ndarray, n_steps: int) -> bool:
        t = n_steps - cut
        frames = t if size <= 0 else ((t - size) // stride + 1 if t >= size else 0)
        return len(label) + int(np.count_nonzero(label[1:] == label[:-1])) <= frames
    return fits


def builder_for(cfg: Mapping, device: torch.device, seed: int) -> BatchBuilder:
    """The batch builder of a calibration: the official augmentation, Philox streams keyed by the
    calibration's seed (the same seed gives the same layer)."""
    m = cfg["model"]
    return BatchBuilder(Augmentation.from_transforms(cfg["dataset"]["data_transforms"]), device,
                        seed=seed, impl=cfg["fastbci"]["impl"], rng="philox",
                        patch=(int(m["patch_size"]), int(m["patch_stride"])),
                        amp=bool(cfg["use_amp"]))


def timed(fn):
    """``(result, seconds)`` of ``fn()``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
