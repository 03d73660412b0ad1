"""Rescoring the word decoder's n-best lists with a large language model.

Every hypothesis of a trial's n-best list carries the decoder's scores (:class:`NBest`): its
total ``score`` = ``acoustic + lm_weight * ngram + word_score * n_words (+ sil_score * silence
frames)``, the ``acoustic`` natural-log sum over its frames and the n-gram's log10 ``ngram``.
An LLM (:class:`fastbci.lm.LLMScorer`) adds ``llm``, the natural-log probability of the
sentence, and :func:`totals` combines them by the formula of :class:`RescoreParams`:

* ``additive`` (default; the lab's flashlight + KenLM decoder with an LLM):
  ``score + llm_alpha * llm``. With ``llm_alpha = 0`` this is the decoder's own ranking.
* ``convex`` (the official OPT rescoring):
  ``acoustic_scale * acoustic + (1 - llm_alpha) * ln(10) * ngram + llm_alpha * llm``.

The best hypothesis by that total is the trial's sentence. :func:`fastbci.lm.rescore_file`
(what ``python -m fastbci.lm rescore`` runs) reads the file ``decode --nbest-out`` writes with
:func:`read_nbest`; :func:`fastbci.lm.decode_file` with ``llm=`` rescores in the same pass.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fastbci.errors import FastbciError
from fastbci.fileio import atomic_path

from .params import RescoreParams

__all__ = ["NBEST_COLUMNS", "NBest", "NBestError", "best_indices", "llm_text", "read_nbest",
           "score_nbest", "scorer_of", "totals", "write_rescored"]

#: the columns ``decode --nbest-out`` writes (fastbci.lm.run.write_nbest)
NBEST_COLUMNS = ("id", "rank", "score", "acoustic_score", "lm_score", "lm_weight", "n_words", "text")
LN10 = math.log(10.0)


class NBestError(FastbciError, ValueError):
    """An n-best file that cannot be rescored (the message names the file and line or id)."""


@dataclass
class NBest:
    """One trial's hypotheses, best first by the decoder: texts and their decoder scores."""
    texts: list[str]
    score: np.ndarray      # the decoder's total
    acoustic: np.ndarray   # natural-log sum over the frames of the path
    ngram: np.ndarray      # the n-gram's log10 probability of the sentence
    n_words: np.ndarray

    @classmethod
    def from_hypotheses(cls, hyps: Sequence) -> "NBest":
        """From :class:`fastbci.lm.Hypothesis` objects (a decoder's output)."""
        return cls([h.text for h in hyps], np.array([h.score for h in hyps], dtype=np.float64),
                   np.array([h.acoustic for h in hyps], dtype=np.float64),
                   np.array([h.lm for h in hyps], dtype=np.float64),
                   np.array([h.n_words for h in hyps], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.texts)


def llm_text(text: str, style: str = "as-decoded") -> str:
    """The text the LLM reads for a hypothesis: as decoded, or (``"sentence"``) with its first
    letter and every word ``i`` / ``i'm`` / ``i'd`` ... upper-cased."""
    if style == "as-decoded" or not text:
        return text
    if style != "sentence":
        raise ValueError(f"unknown llm_text {style!r}")
    words = [("I" + w[1:]) if w == "i" or w.startswith("i'") else w for w in text.split(" ")]
    out = " ".join(words)
    return out[:1].upper() + out[1:]


def totals(nb: NBest, llm: np.ndarray, params: RescoreParams) -> np.ndarray:
    """The rescoring total of each hypothesis (see the module docstring)."""
    llm = np.asarray(llm, dtype=np.float64)
    if params.formula == "additive":
        return nb.score + params.llm_alpha * llm
    return (params.acoustic_scale * nb.acoustic + (1.0 - params.llm_alpha) * LN10 * nb.ngram
            + params.llm_alpha * llm)


def best_indices(nbests: Sequence[NBest], llm: Sequence[np.ndarray], params: RescoreParams) -> list[int]:
    """Per trial, the index of the hypothesis with the highest total (the first on a tie, i.e.
    the decoder's order); -1 for a trial without hypotheses."""
    return [int(np.argmax(totals(nb, s, params))) if len(nb) else -1 for nb, s in zip(nbests, llm)]


def score_nbest(scorer, nbests: Sequence[NBest], style: str = "as-decoded") -> list[np.ndarray]:
    """The LLM's natural-log probability of every hypothesis (one array per trial), all
    trials in one call so that the scorer batches across them."""
    flat = [llm_text(t, style) for nb in nbests for t in nb.texts]
    scores = scorer.score(flat) if flat else np.zeros(0)
    cuts = np.cumsum([len(nb) for nb in nbests])[:-1]
    return np.split(np.asarray(scores, dtype=np.float64), cuts) if len(nbests) else []


def _cell(path: Path, line: int, row: dict, key: str, kind):
    try:
        return kind(row[key])
    except (TypeError, ValueError):
        raise NBestError(f"{path}, line {line}: column {key} holds {row[key]!r}, not "
                         f"{'an integer' if kind is int else 'a number'}") from None


def read_nbest(path: str | os.PathLike, ids: Sequence[int] | None = None) -> tuple[list[int], list[NBest]]:
    """The n-best lists of a file ``decode --nbest-out`` wrote: ``(ids, lists)`` in id order.

    Every id of ``ids`` (e.g. the logits file's) must have hypotheses; without ``ids`` the
    file's ids must run without a gap from the smallest to the largest. A wrong header, a bad
    number (file and line) or an id without hypotheses is an :class:`NBestError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the n-best file {path} does not exist")
    rows: dict[int, list[tuple[int, str, float, float, float, int]]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in NBEST_COLUMNS if c not in header]
        if missing:
            raise NBestError(f"{path}: the header {','.join(header) or '(empty file)'} lacks the "
                             f"column(s) {', '.join(missing)}; want the file python -m fastbci.lm "
                             f"decode --nbest-out writes ({','.join(NBEST_COLUMNS)})")
        for line, row in enumerate(reader, start=2):
            if None in row or any(row[c] is None for c in NBEST_COLUMNS):
                raise NBestError(f"{path}, line {line}: want {len(header)} columns, got another count")
            i = _cell(path, line, row, "id", int)
            rows.setdefault(i, []).append((_cell(path, line, row, "rank", int), row["text"],
                                           _cell(path, line, row, "score", float),
                                           _cell(path, line, row, "acoustic_score", float),
                                           _cell(path, line, row, "lm_score", float),
                                           _cell(path, line, row, "n_words", int)))
    if ids is None:
        if not rows:
            raise NBestError(f"{path} holds no hypothesis")
        ids = list(range(min(rows), max(rows) + 1))
    absent = [i for i in ids if i not in rows]
    if absent:
        raise NBestError(f"{path}: id {absent[0]} has no hypotheses"
                         + (f" ({len(absent)} ids have none)" if len(absent) > 1 else ""))
    lists = []
    for i in ids:
        r = sorted(rows[i])
        lists.append(NBest([x[1] for x in r], np.array([x[2] for x in r]), np.array([x[3] for x in r]),
                           np.array([x[4] for x in r]), np.array([x[5] for x in r], dtype=np.int64)))
    return [int(i) for i in ids], lists


def write_rescored(path: str | os.PathLike, ids: Sequence[int], nbests: Sequence[NBest],
                   llm: Sequence[np.ndarray], params: RescoreParams) -> Path:
    """``id,rank,decoder_rank,total,llm_score,score,acoustic_score,lm_score,n_words,text``: each
    trial's hypotheses ranked by the rescoring total (``rank`` 0 is the sentence chosen)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "rank", "decoder_rank", "total", "llm_score", "score", "acoustic_score",
                    "lm_score", "n_words", "text"])
        for i, nb, s in zip(ids, nbests, llm):
            tot = totals(nb, s, params)
            for r, k in enumerate(np.argsort(-tot, kind="stable")):
                w.writerow([int(i), r, int(k), f"{tot[k]:.6f}", f"{s[k]:.6f}", f"{nb.score[k]:.6f}",
                            f"{nb.acoustic[k]:.6f}", f"{nb.ngram[k]:.6f}", int(nb.n_words[k]), nb.texts[k]])
    return path


def scorer_of(llm, options: dict | None):
    """An :class:`~fastbci.lm.LLMScorer` (``llm`` itself when it is one)."""
    if hasattr(llm, "score") and hasattr(llm, "stats"):
        return llm
    from .llm import LLMScorer
    return LLMScorer(llm, **(options or {}))
