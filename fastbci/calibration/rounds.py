"""Pseudo-label rounds (docs/calibration.md): a day layer refined on its own most confident
decodes, alone (``--unlabelled``, and ``fastbci evaluate --adapt-day``) or anchored by a few
labelled sentences (``--unlabelled-rest``).

Each round decodes the unlabelled trials with the current layer, keeps the most confident
fraction of them with their decodes as labels, and trains the layer on those together with the
labelled trials (their own labels, weight 1), a pseudo-labelled trial's loss weighted by its
confidence when asked. The unlabelled trials' labels, if the store has any, are never read.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from fastbci.data.batch import BatchBuilder
from fastbci.data.store import TrialStore

from .core import Budget, NewDay, pseudo_label, train_layer, with_labels

__all__ = ["Rounds", "run_rounds"]


@dataclasses.dataclass(frozen=True)
class Rounds:
    """``rounds`` rounds; each keeps the ``keep`` most confident fraction of the unlabelled
    trials and trains ``steps`` steps; ``weighted``: a pseudo-labelled trial's CTC loss is
    weighted by its confidence (the mean over frames of the largest class probability);
    ``pull`` and ``rank``: how far each round's training may move the layer
    (:func:`~fastbci.calibration.core.train_layer`)."""
    rounds: int = 3
    keep: float = 0.5
    steps: int = Budget.steps // 3
    weighted: bool = True
    pull: float = 0.0
    rank: int | None = None


def run_rounds(nd: NewDay, store: TrialStore, unlabelled: np.ndarray, builder: BatchBuilder,
               budget: Budget, plan: Rounds, seed: int, *, labelled: np.ndarray | None = None,
               labels: Sequence[np.ndarray] | None = None, held: np.ndarray | None = None,
               decode: Callable[[np.ndarray], np.ndarray] | None = None, first_step: int = 0,
               say: Callable[[str], None] = lambda s: None) -> tuple[int, list[dict]]:
    """``plan.rounds`` rounds of pseudo-labels on rows ``unlabelled`` of ``store`` for the
    layer of ``nd`` (left in the model). ``labelled``: rows trained on in every round with
    ``labels[row]`` (their true labels, weight 1); ``held``: labelled rows whose CTC loss stops
    each round early and picks its best layer; ``decode``: the word decoder (default greedy).
    Round ``r`` trains with seed ``seed + r`` on streams that continue from ``first_step``.
    Returns the steps run and, per round, the trials used of each kind."""
    empty = np.zeros(0, dtype=np.int64)
    labelled = empty if labelled is None else np.asarray(labelled, dtype=np.int64)
    held = empty if held is None else np.asarray(held, dtype=np.int64)
    unlabelled = np.asarray(unlabelled, dtype=np.int64)
    steps, out = 0, []
    for r in range(plan.rounds):
        kept, pseudo, conf = pseudo_label(nd, builder, plan.keep, decode, store=store, rows=unlabelled)
        record = {"round": r + 1, "labelled": int(len(labelled)), "kept": int(len(kept)),
                  "of": int(len(unlabelled)),
                  "mean_confidence_kept": float(conf[kept].mean()) if len(kept) else None}
        train_rows = np.union1d(labelled, kept)
        if not len(train_rows):
            out.append(dict(record, steps=0))
            break
        for row in np.union1d(labelled, held):
            pseudo[row] = np.asarray(labels[row], dtype=np.int64)
        weights = None
        if plan.weighted:
            weights = np.ones(store.n_trials, dtype=np.float32)
            weights[kept] = conf[kept]
        res = train_layer(nd, with_labels(store, pseudo), train_rows, held, builder, budget,
                          seed + r, steps=plan.steps, say=say, weights=weights,
                          first_step=first_step + steps, pull=plan.pull, rank=plan.rank)
        steps += res["steps"]
        out.append(dict(record, steps=res["steps"], heldout=res["heldout"]))
        say(f"  round {r + 1}: trained on {len(labelled)} labelled and {len(kept)} of "
            f"{len(unlabelled)} pseudo-labelled trials")
    return steps, out
