"""One model's outputs on a split (:class:`SplitRun`) and the ensemble of several
(``fastbci evaluate --checkpoint A --checkpoint B ...``).

An ensemble averages, trial by trial and frame by frame, the log-probabilities (``log_softmax``
of the logits) of models whose outputs are framed alike: the same patch size and stride, and the
same smoothing (the same evaluation semantics), so that every trial has the same frames in every
model. The average is decoded as one model's output: greedily for the PER, and, being
log-probabilities up to a per-frame constant, by the word decoder (which applies
``log_softmax`` again). Each model's own PER is kept in the summary.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from fastbci.data.phonemes import BLANK_ID
from fastbci.errors import FastbciError
from fastbci.official_eval import greedy_tokens, per_report

__all__ = ["EnsembleError", "SplitRun", "combine", "log_softmax", "with_outputs"]


class EnsembleError(FastbciError, ValueError):
    """Checkpoints that cannot be ensembled (the message names both files and the difference)."""


@dataclasses.dataclass
class SplitRun:
    """A model's per-trial outputs on a split, in (session, block, trial) order.

    ``packed``: the arrays of ``logits_{split}.npz`` (``logits``, ``offsets``, ``lengths``,
    ``ids``, ``tokens``, ``n_tokens``, ``session``, ``day``, ``block_num``, ``trial_num``,
    ``row``); ``labels``: each trial's true phoneme ids (None on the test split);
    ``sentence_label``: the sentences (val); ``framing``: ``(patch_size, patch_stride)``;
    ``semantics``: ``"validation"`` (the trainer's batched validation, 'same' smoothing) or
    ``"official"`` (the official per-trial loop, 'valid' smoothing)."""
    checkpoint: str
    config: str
    framing: tuple[int, int]
    semantics: str
    packed: dict
    labels: list[np.ndarray] | None
    sentence_label: np.ndarray | None
    per: float | None
    per_by_day: dict
    loss: float | None = None
    blank_fraction: float | None = None
    per_validation: float | None = None   # with the official semantics: the validation-style PER

    def trial_logits(self, i: int) -> np.ndarray:
        off = self.packed["offsets"]
        return self.packed["logits"][off[i]:off[i + 1]]


def log_softmax(x: np.ndarray) -> np.ndarray:
    """``log_softmax`` over the last axis, float64."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _check_alike(runs: Sequence[SplitRun]) -> None:
    a = runs[0]
    for b in runs[1:]:
        if b.framing != a.framing:
            raise EnsembleError(
                f"cannot ensemble {a.checkpoint} (patch size {a.framing[0]}, stride {a.framing[1]}) "
                f"with {b.checkpoint} (patch size {b.framing[0]}, stride {b.framing[1]}): the models "
                "must frame their outputs alike")
        if b.semantics != a.semantics:
            raise EnsembleError(f"cannot ensemble {a.checkpoint} ({a.semantics} semantics) with "
                                f"{b.checkpoint} ({b.semantics})")
        keys = ("session", "block_num", "trial_num", "lengths")
        for k in keys:
            if len(a.packed[k]) != len(b.packed[k]) or not np.array_equal(a.packed[k], b.packed[k]):
                what = "output frames per trial" if k == "lengths" else "trials"
                raise EnsembleError(f"cannot ensemble {a.checkpoint} with {b.checkpoint}: their {what} "
                                    f"differ ({len(a.packed['row'])} vs {len(b.packed['row'])} trials; "
                                    "the same split, sessions and data are needed)")


def _pack_tokens(tokens: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    n_tok = np.array([len(t) for t in tokens], dtype=np.int64)
    tok = np.full((len(tokens), max(int(n_tok.max()) if len(tokens) else 0, 1)), -1, dtype=np.int64)
    for i, t in enumerate(tokens):
        tok[i, :len(t)] = t
    return tok, n_tok


def with_outputs(run: SplitRun, logits: np.ndarray, semantics: str, **changes) -> SplitRun:
    """``run`` with other per-trial ``logits`` (packed as ``run.packed["logits"]``, same trials;
    the offsets follow the new lengths when ``changes`` give ``packed``): greedy decoding, PER
    per session and blank fraction recomputed."""
    packed = dict(changes.pop("packed", run.packed))
    off = packed["offsets"]
    tokens = [greedy_tokens(logits[off[i]:off[i + 1]]) for i in range(len(off) - 1)]
    packed["logits"] = logits
    packed["tokens"], packed["n_tokens"] = _pack_tokens(tokens)
    per, by_day = (None, {})
    if run.labels is not None:
        per, by_day = per_report(tokens, run.labels, [str(s) for s in packed["session"]])
    blank = float((logits.argmax(-1) == BLANK_ID).mean()) if len(logits) else float("nan")
    return dataclasses.replace(run, packed=packed, semantics=semantics, per=per, per_by_day=by_day,
                               blank_fraction=blank, **changes)


def combine(runs: Sequence[SplitRun]) -> SplitRun:
    """The ensemble of ``runs``: per-trial mean of their log-probabilities (float32), its greedy
    decoding and PER (overall and per session); no CTC loss."""
    if len(runs) == 1:
        return runs[0]
    _check_alike(runs)
    total = np.zeros(runs[0].packed["logits"].shape, dtype=np.float64)
    for r in runs:
        total += log_softmax(r.packed["logits"])
    mean = (total / len(runs)).astype(np.float32)
    return with_outputs(runs[0], mean, runs[0].semantics, loss=None, per_validation=None,
                        checkpoint=" + ".join(r.checkpoint for r in runs))
