"""The t15 phoneme inventory (41 CTC classes) and helpers to convert between ids and symbols.

Class 0 is the CTC blank, 1-39 the ARPAbet phonemes without stress marks in alphabetical order,
and 40 the inter-word silence, written ``" | "`` in the official release. A silence follows
every word of a sentence, the last word included.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

#: index -> symbol; ``PHONEMES[0] == "BLANK"``, ``PHONEMES[40] == " | "``.
PHONEMES: tuple[str, ...] = (
    "BLANK",
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH",
    "EH", "ER", "EY", "F", "G", "HH", "IH", "IY", "JH", "K",
    "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH",
    "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH",
    " | ",
)
N_CLASSES = len(PHONEMES)  # 41
BLANK_ID = 0
SILENCE_ID = 40
SILENCE = PHONEMES[SILENCE_ID]

#: symbol -> index (``"|"`` and ``"SIL"`` are accepted as aliases of the silence).
PHONEME_TO_ID: dict[str, int] = {p: i for i, p in enumerate(PHONEMES)}
PHONEME_TO_ID["|"] = SILENCE_ID
PHONEME_TO_ID["SIL"] = SILENCE_ID

assert N_CLASSES == 41


def phonemes_to_ids(symbols: Iterable[str]) -> list[int]:
    """``["HH", "AY", " | "] -> [16, 6, 40]``; stress digits (``"AY1"``) are ignored."""
    out = []
    for s in symbols:
        key = s.strip().rstrip("012") if s.strip() else s
        key = key if key in PHONEME_TO_ID else s
        if key not in PHONEME_TO_ID:
            raise ValueError(f"unknown phoneme symbol {s!r}; valid symbols: "
                             f"{' '.join(PHONEMES[1:40])} and ' | '")
        out.append(PHONEME_TO_ID[key])
    return out


def ids_to_phonemes(ids: Sequence[int] | np.ndarray) -> list[str]:
    """``[16, 6, 40] -> ["HH", "AY", " | "]`` (padding zeros are kept as ``"BLANK"``)."""
    out = []
    for i in np.asarray(ids).ravel().tolist():
        if not 0 <= i < N_CLASSES:
            raise ValueError(f"phoneme id {i} is outside 0..{N_CLASSES - 1}")
        out.append(PHONEMES[i])
    return out
