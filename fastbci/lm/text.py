"""Sentence normalisation and word error rate, as the official Brain-to-Text '25 evaluation.

The official evaluation (``model_training/evaluate_model.py`` with its helper
``remove_punctuation``) scores a prediction against ``sentence_label`` after normalising both:
every character other than ASCII letters, hyphen, apostrophe and space is deleted; then
``"- "`` becomes ``" "``, ``"--"`` is deleted, ``" '"`` becomes ``"'"``; the text is
lower-cased and runs of spaces collapse to one. The WER is the total word-level Levenshtein
distance over the total number of reference words (not a mean of per-sentence rates).
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

__all__ = ["normalize", "word_edit_distance", "wer_report"]

_DROP = re.compile(r"[^a-zA-Z\- ']")


def normalize(sentence: str) -> str:
    """The official normalisation of one sentence (see the module docstring)."""
    s = _DROP.sub("", str(sentence))
    s = s.replace("- ", " ").replace("--", "").replace(" '", "'").lower()
    return " ".join(s.split())


def word_edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences (substitution, insertion and deletion
    each cost 1), the measure ``editdistance.eval`` gives on word lists."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def wer_report(refs: Sequence[str], hyps: Sequence[str], days: Sequence | None = None,
               day_names: Mapping | None = None) -> dict:
    """Word error rate of ``hyps`` against ``refs``, both normalised first.

    Returns ``{"wer", "errors", "words", "n_sentences", "by_day": {day: {"wer", "errors",
    "words", "n_sentences"}}}``; ``wer`` is None when the references hold no word. ``days``
    (one key per sentence, e.g. the session name) groups the per-day figures; ``day_names``
    maps a key to the name shown.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} reference sentences but {len(hyps)} hypotheses")
    if days is not None and len(days) != len(refs):
        raise ValueError(f"{len(days)} day keys for {len(refs)} sentences")
    per_day: dict = {}
    errors = words = 0
    for i, (r, h) in enumerate(zip(refs, hyps)):
        rw, hw = normalize(r).split(), normalize(h).split()
        e = word_edit_distance(rw, hw)
        errors += e
        words += len(rw)
        if days is not None:
            key = days[i].item() if hasattr(days[i], "item") else days[i]
            key = day_names.get(key, key) if day_names else key
            d = per_day.setdefault(key, [0, 0, 0])
            d[0] += e
            d[1] += len(rw)
            d[2] += 1
    return {"wer": errors / words if words else None, "errors": errors, "words": words,
            "n_sentences": len(refs),
            "by_day": {k: {"wer": e / w if w else None, "errors": e, "words": w, "n_sentences": n}
                       for k, (e, w, n) in per_day.items()}}
