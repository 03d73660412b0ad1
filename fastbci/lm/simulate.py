"""CTC-like log-probabilities for known label sequences: test and benchmark input for the decoder.

A phoneme model trained with CTC emits mostly blanks with short peaks on each label token.
:func:`crafted_log_probs` builds such a ``(T, 41)`` array for given label ids (phonemes with a
silence after every word): a few blank frames, then each token's peak for ``frames`` frames,
with Gaussian noise on every score and, with probability ``confusion``, a competing phoneme
in the token's frames scored ``margin`` below the right one (a ``(low, high)`` range: drawn
uniformly per token; a negative margin makes the rival win, so the best path alone is not
always the truth and the LM matters).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fastbci.data.phonemes import BLANK_ID, N_CLASSES, SILENCE_ID

__all__ = ["crafted_log_probs"]


def crafted_log_probs(ids: Sequence[int], rng: np.random.Generator, *, frames: tuple[int, int] = (1, 3),
                      gap: tuple[int, int] = (1, 3), lead: int = 4, peak: float = 8.0,
                      noise: float = 1.0, confusion: float = 0.0, margin: float | tuple[float, float] = 1.0,
                      length: int | None = None) -> np.ndarray:
    """Log-probabilities (float32, ``(T, 41)``) whose frames spell ``ids`` under CTC.

    ``frames`` / ``gap``: inclusive ranges of frames per token and blank frames after it;
    ``lead``: blank frames before the first token; ``peak``: score of the frame's class over
    the others (before noise of std ``noise``); ``confusion`` / ``margin``: see the module
    docstring; ``length``: pad with blank frames up to this many (at least the frames needed).
    """
    ids = [int(i) for i in ids]
    if any(not 0 < i < N_CLASSES for i in ids):
        raise ValueError(f"label ids must be 1..{N_CLASSES - 1}, got {ids}")
    target: list[int] = [BLANK_ID] * lead
    rival: list[int] = [-1] * lead
    gaps: list[float] = [0.0] * lead
    lo, hi = (margin, margin) if np.isscalar(margin) else margin
    for i in ids:
        k = int(rng.integers(frames[0], frames[1] + 1))
        r, m = -1, 0.0
        if i != SILENCE_ID and rng.random() < confusion:
            r = int(rng.integers(1, SILENCE_ID - 1))
            r += r >= i  # another phoneme
            m = float(rng.uniform(lo, hi))
        target += [i] * k
        rival += [r] * k
        gaps += [m] * k
        g = int(rng.integers(gap[0], gap[1] + 1))
        target += [BLANK_ID] * g
        rival += [-1] * g
        gaps += [0.0] * g
    if length is not None and length > len(target):
        target += [BLANK_ID] * (length - len(target))
        rival += [-1] * (length - len(rival))
        gaps += [0.0] * (length - len(gaps))
    T = len(target)
    scores = noise * rng.standard_normal((T, N_CLASSES))
    t = np.arange(T)
    tgt = np.asarray(target)
    scores[t, tgt] += peak
    riv = np.asarray(rival)
    has = riv >= 0
    scores[t[has], riv[has]] += peak - np.asarray(gaps)[has]
    scores -= scores.max(axis=1, keepdims=True)
    return (scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))).astype(np.float32)
