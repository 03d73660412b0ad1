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
(what ``fastbci lm rescore`` runs) reads the file ``decode --nbest-file`` writes with
:func:`read_nbest`; :func:`fastbci.lm.decode_file` with ``llm=`` rescores in the same pass.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fastbci.errors import FastbciError
from fastbci.fileio import atomic_path, path_problem

from .params import RescoreParams

__all__ = ["NBEST_COLUMNS", "NBest", "NBestError", "best_indices", "llm_text", "read_nbest",
           "score_nbest", "scorer_of", "totals", "write_rescored"]

#: the columns ``decode --nbest-file`` writes (fastbci.lm.run.write_nbest)
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
    """The value of column ``key``: an integer, or a finite number (a NaN or an infinity
    cannot be ranked, and would make every total of its trial NaN)."""
    try:
        value = kind(row[key])
    except (TypeError, ValueError):
        raise NBestError(f"{path}, line {line}: column {key} holds {row[key]!r}, not "
                         f"{'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise NBestError(f"{path}, line {line}: column {key} holds {row[key]!r}, not a finite "
                         "number (a hypothesis scored NaN or infinite cannot be ranked)")
    return value


def _nbest_text(path: Path) -> str:
    """The text of an n-best file: UTF-8, with or without the byte-order mark that a
    spreadsheet's "CSV UTF-8" puts first; what stops it is an error naming the line and column."""
    problem = path_problem(path)
    if problem is not None:
        if not os.path.lexists(path):
            raise FileNotFoundError(f"the n-best file {path} does not exist")
        raise NBestError(f"the n-best file {path} {problem}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, raw, e.start) from None


def _not_utf8(path: Path, raw: bytes, at: int) -> NBestError:
    """The error for the byte at offset ``at``, which is not UTF-8: its line, and its column
    (by the header's name) counted by the CSV reader on the part of the line before it."""
    nl = b"\n"
    start = raw.rfind(nl, 0, at) + 1
    head_end = raw.find(nl)
    header = next(csv.reader([raw[:head_end if head_end >= 0 else len(raw)].decode("utf-8-sig", "replace")]),
                  [])
    try:
        before = next(csv.reader([raw[start:at].decode("utf-8-sig")]), [""])
    except csv.Error:
        before = [""]
    k = max(len(before), 1) - 1
    column = header[k] if start > 0 and k < len(header) else f"{k + 1}"
    return NBestError(f"{path}, line {raw.count(nl, 0, at) + 1}: column {column} holds byte "
                      f"0x{raw[at]:02x}, which is not UTF-8 text; save the file as UTF-8 (a "
                      "spreadsheet's \"CSV UTF-8\")")


def _read_rows(path: Path, allowed: set[int] | None) -> tuple[dict[int, list], dict[int, int]]:
    """``{id: [(rank, text, score, acoustic, lm, n_words), ...]}`` and the line of each id's
    first row, every row checked (see :func:`read_nbest`)."""
    reader = csv.DictReader(io.StringIO(_nbest_text(path), newline=""))
    header = reader.fieldnames or []
    missing = [c for c in NBEST_COLUMNS if c not in header]
    if missing:
        raise NBestError(f"{path}: the header {','.join(header) or '(empty file)'} lacks the "
                         f"column(s) {', '.join(missing)}; want the file fastbci lm "
                         f"decode --nbest-file writes ({','.join(NBEST_COLUMNS)})")
    rows: dict[int, list] = {}
    lines: dict[int, int] = {}
    seen: dict[tuple[int, int], tuple[int, tuple]] = {}
    for row in reader:
        line = reader.line_num
        if None in row or any(row[c] is None for c in NBEST_COLUMNS):
            raise NBestError(f"{path}, line {line}: want {len(header)} columns, got another count")
        i = _cell(path, line, row, "id", int)
        if allowed is not None and i not in allowed:
            raise NBestError(f"{path}, line {line}: column id holds {i}, not a trial of the logits "
                             f"file ({len(allowed)} trials, ids {min(allowed, default='-')} to "
                             f"{max(allowed, default='-')}): is it the n-best of another split?")
        rank = _cell(path, line, row, "rank", int)
        hyp = (rank, row["text"], _cell(path, line, row, "score", float),
               _cell(path, line, row, "acoustic_score", float), _cell(path, line, row, "lm_score", float),
               _cell(path, line, row, "n_words", int))
        if (i, rank) in seen:
            first, other = seen[(i, rank)]
            raise NBestError(f"{path}, line {line}: columns id, rank hold {i}, {rank}, already on line "
                             f"{first}" + (" (the same row twice)" if other == hyp else
                                           f" (with the text {other[1]!r})")
                             + "; each (id, rank) must appear once")
        seen[(i, rank)] = (line, hyp)
        rows.setdefault(i, []).append(hyp)
        lines.setdefault(i, line)
    return rows, lines


def _first_gap(path: Path, rows: dict[int, list], lines: dict[int, int]) -> None:
    """Without the logits' ids, the file's ids must run without a gap (found without sizing
    anything by an id: an id of 99999999999 costs nothing)."""
    if not rows:
        raise NBestError(f"{path} holds no hypothesis")
    keys = sorted(rows)
    if keys[-1] - keys[0] + 1 == len(keys):
        return
    gap = next(a + 1 for a, b in zip(keys, keys[1:]) if b != a + 1)
    raise NBestError(f"{path}: id {gap} has no hypotheses ({keys[-1] - keys[0] + 1 - len(keys)} ids "
                     f"between {keys[0]} and {keys[-1]} have none; line {lines[keys[-1]]}: "
                     f"column id holds {keys[-1]})")


def read_nbest(path: str | os.PathLike, ids: Sequence[int] | None = None) -> tuple[list[int], list[NBest]]:
    """The n-best lists of a file ``decode --nbest-file`` wrote: ``(ids, lists)`` in id order.

    Every id of ``ids`` (e.g. the logits file's) must have hypotheses and the file may hold no
    other; without ``ids`` the file's ids must run without a gap from the smallest to the
    largest. Everything is checked before anything is scored: a path that is not a readable file,
    bytes that are not UTF-8 (a leading byte-order mark is accepted), a wrong header, a cell that
    is not an integer or a finite number, an (id, rank) pair given twice, an id that is not a
    trial of ``ids`` or an id without hypotheses is an :class:`NBestError` naming the file, the
    line and the column."""
    path = Path(path)
    rows, lines = _read_rows(path, None if ids is None else {int(i) for i in ids})
    if ids is None:
        _first_gap(path, rows, lines)
        ids = sorted(rows)
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
