"""Reading ARPA n-gram files: the vocabulary (fast, unigrams only) and a pure-Python scorer.

:class:`ArpaModel` gives ``log10 p(w | h)`` with the ARPA backoff rule: the longest stored
n-gram ending in ``w`` wins, times the backoff weights of the longer contexts it skipped. It
is the reference the decoder's KenLM (through flashlight-text) is checked against, and a way
to score sentences without flashlight-text; it holds the whole model in Python dicts, so it is
meant for small and medium models.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, Sequence

from fastbci.errors import FastbciError
from fastbci.fileio import check_file

__all__ = ["ArpaError", "ArpaModel", "arpa_vocabulary", "is_arpa"]


class ArpaError(FastbciError, ValueError):
    """A file that is not a readable ARPA model (the message names the file and line)."""


def is_arpa(path: str | os.PathLike) -> bool:
    """True when the file's first non-empty line is ``\\data\\`` (else, e.g., a KenLM binary)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.lstrip().startswith(b"\\data\\")


def _sections(path: Path, max_order: int | None = None) -> Iterator[tuple[int, int, list[str]]]:
    """``(order, line number, fields)`` of each n-gram line; checks the header and counts."""
    check_file(path, "the LM file")
    with open(path, encoding="utf-8", errors="replace") as f:
        lineno, order, declared, seen = 0, 0, {}, 0
        for raw in f:
            lineno += 1
            line = raw.strip()
            if not line:
                continue
            if order == 0 and not declared:
                if line != "\\data\\":
                    raise ArpaError(f"{path}:{lineno}: not an ARPA file (first line {line[:40]!r}, "
                                    "want \\data\\)")
                declared[0] = 0
                continue
            if line.startswith("ngram ") and order == 0:
                try:
                    n, m = line[6:].split("=")
                    declared[int(n)] = int(m)
                except ValueError:
                    raise ArpaError(f"{path}:{lineno}: bad count line {line!r}") from None
                continue
            if line.startswith("\\") and line.endswith("-grams:"):
                if order and seen != declared.get(order):
                    raise ArpaError(f"{path}: {seen} {order}-grams, the header says {declared.get(order)}")
                try:
                    order, seen = int(line[1:-7]), 0
                except ValueError:
                    raise ArpaError(f"{path}:{lineno}: bad section line {line!r}") from None
                if max_order is not None and order > max_order:
                    return
                continue
            if line == "\\end\\":
                if order and seen != declared.get(order):
                    raise ArpaError(f"{path}: {seen} {order}-grams, the header says {declared.get(order)}")
                return
            fields = line.split()
            if order == 0 or len(fields) not in (order + 1, order + 2):
                raise ArpaError(f"{path}:{lineno}: malformed n-gram line {line[:60]!r}")
            seen += 1
            yield order, lineno, fields
        raise ArpaError(f"{path}: the file ends without \\end\\ (truncated?)")


def arpa_vocabulary(path: str | os.PathLike) -> dict[str, float]:
    """``word -> log10 unigram probability`` of an ARPA file (stops after the unigrams)."""
    path = Path(path)
    out = {}
    for _, lineno, fields in _sections(path, max_order=1):
        try:
            out[fields[1]] = float(fields[0])
        except ValueError:
            raise ArpaError(f"{path}:{lineno}: {fields[0]!r} is not a number") from None
    if not out:
        raise ArpaError(f"{path}: no unigram")
    return out


class ArpaModel:
    """An ARPA model in memory: ``prob[(w1, .., wn)] = log10 p`` and ``bow[...] = log10 b``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.prob: dict[tuple[str, ...], float] = {}
        self.bow: dict[tuple[str, ...], float] = {}
        self.order = 0
        for order, lineno, fields in _sections(self.path):
            try:
                lp = float(fields[0])
                bw = float(fields[order + 1]) if len(fields) == order + 2 else None
            except ValueError:
                raise ArpaError(f"{self.path}:{lineno}: a number is malformed") from None
            key = tuple(fields[1:order + 1])
            self.prob[key] = lp
            if bw is not None:
                self.bow[key] = bw
            self.order = max(self.order, order)
        if not self.prob:
            raise ArpaError(f"{self.path}: no n-gram")
        self.vocab = [k[0] for k in self.prob if len(k) == 1]

    def logprob(self, word: str, context: Sequence[str] = ()) -> float:
        """``log10 p(word | context)``; an unknown word is scored as ``<unk>``."""
        if (word,) not in self.prob:
            word = "<unk>"
        ctx = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
        ctx = tuple(w if (w,) in self.prob else "<unk>" for w in ctx)
        back = 0.0
        while True:
            key = ctx + (word,)
            if key in self.prob:
                return self.prob[key] + back
            if not ctx:
                return -math.inf
            back += self.bow.get(ctx, 0.0)
            ctx = ctx[1:]

    def score_sentence(self, words: Sequence[str] | str, bos: bool = True, eos: bool = True) -> list[float]:
        """``log10 p`` of every word (and of ``</s>`` when ``eos``) given its history."""
        words = words.split() if isinstance(words, str) else list(words)
        hist = ["<s>"] if bos else []
        out = []
        for w in words + (["</s>"] if eos else []):
            out.append(self.logprob(w, hist))
            hist.append(w)
        return out
