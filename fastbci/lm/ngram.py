"""Interpolated modified Kneser-Ney n-gram models (Chen & Goodman), built with numpy, as ARPA.

``fastbci lm build --corpus TEXT --order N --out LM.arpa`` or :func:`build_arpa`.
The corpus holds one sentence a line; each is normalised as the evaluation normalises
(:func:`fastbci.lm.text.normalize`) and wrapped in ``<s> ... </s>``; empty lines are skipped.

The estimate is the one KenLM's lmplz makes:

* counts: raw counts at the highest order; below it, the number of distinct words seen to the
  left of the n-gram (continuation counts), except for n-grams that begin with ``<s>`` (raw);
* three discounts per order from the count-of-counts t1..t4 of those counts:
  ``Y = t1 / (t1 + 2 t2)``, ``D1 = 1 - 2Y t2/t1``, ``D2 = 2 - 3Y t3/t2``, ``D3+ = 3 - 4Y t4/t3``
  (a corpus too small for a discount falls back to 0.5, 1.0 or 1.5 for that one);
* ``p(w | h) = (c(hw) - D(c(hw))) / c(h.) + gamma(h) p(w | h')`` with
  ``gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / c(h.)``; the unigrams interpolate with
  the uniform distribution over the vocabulary (``<unk>`` and ``</s>`` included, ``<s>`` not),
  so ``<unk>`` gets ``gamma(empty) / |V|``.

The ARPA file holds ``log10 p(w | h)`` for every kept n-gram and ``log10 gamma(h)`` as its
backoff weight. Pruning (``prune=True``) drops n-grams of order 3 and above whose count is 1,
keeping every prefix and suffix of a kept n-gram; each affected context's backoff weight is
raised by exactly the pruned mass, so every conditional distribution still sums to 1.

Every step works on whole arrays: an n-gram of order n is ``(index of its first n-1 words at
order n-1, last word)``, encoded in one int64 key; ``np.unique`` counts them.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from fastbci import outputs
from fastbci.fileio import atomic_path, check_file


__all__ = ["BOS", "EOS", "UNK", "build_arpa", "read_corpus", "NGramCounts", "count_ngrams"]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_UNK, _BOS, _EOS = 0, 1, 2
_FALLBACK_D = (0.5, 1.0, 1.5)
# the evaluation's normalisation, applied to a whole text at once (newlines kept)
_DROP_BUT_NEWLINE = re.compile(r"[^a-zA-Z\- '\n]")


def read_corpus(corpus: str | os.PathLike | Sequence[str | os.PathLike] | Iterable[str] | None = None,
                *, lines: Iterable[str] | None = None) -> tuple[list[str], np.ndarray, int]:
    """Normalised corpus as ``(vocab, tokens, n_sentences)``: ``vocab[0:3]`` are ``<unk>``,
    ``<s>``, ``</s>``; ``tokens`` are the word ids of every sentence wrapped in ``<s> ... </s>``.
    ``corpus``: one or more text files; ``lines``: sentences given directly."""
    if lines is None:
        paths = [corpus] if isinstance(corpus, (str, os.PathLike)) else list(corpus or [])
        if not paths:
            raise ValueError("no corpus given")
        parts = []
        for p in paths:
            p = check_file(p, "the corpus file")
            parts.append(p.read_text(encoding="utf-8", errors="replace"))
        text = "\n".join(parts)
    else:
        text = "\n".join(str(s).replace("\n", " ") for s in lines)
    # normalize() for every line at once: the same substitutions, none of which spans a newline
    text = _DROP_BUT_NEWLINE.sub("", text)
    text = text.replace("- ", " ").replace("--", "").replace(" '", "'").lower()
    sents = [s for s in text.split("\n") if s.strip()]
    if not sents:
        raise ValueError("the corpus holds no sentence (after normalisation)")
    words = (f"{BOS} " + f" {EOS}\n{BOS} ".join(sents) + f" {EOS}").split()
    index = {UNK: _UNK, BOS: _BOS, EOS: _EOS}
    for w in dict.fromkeys(words):  # distinct words in order of first use
        index.setdefault(w, len(index))
    tokens = np.fromiter(map(index.__getitem__, words), dtype=np.int64, count=len(words))
    return list(index), tokens, len(sents)


@dataclass
class _Order:
    """The distinct n-grams of one order: ``prefix`` (index at order n-1), ``last`` word,
    ``suffix`` (index of words 2..n at order n-1), ``first`` word, ``raw`` count."""
    prefix: np.ndarray | None
    last: np.ndarray
    suffix: np.ndarray | None
    first: np.ndarray
    raw: np.ndarray

    @property
    def size(self) -> int:
        return len(self.last)


@dataclass
class NGramCounts:
    """Counts of every order and the Kneser-Ney adjusted counts (see the module docstring)."""
    vocab: list[str]
    orders: list[_Order]
    adjusted: list[np.ndarray]
    n_sentences: int
    n_tokens: int


def count_ngrams(vocab: list[str], tokens: np.ndarray, n_sentences: int, order: int) -> NGramCounts:
    """Count the n-grams of orders 1..``order`` inside sentences, vectorised."""
    if order < 1:
        raise ValueError(f"the order must be >= 1, got {order}")
    V, L = len(vocab), len(tokens)
    sid = np.cumsum(tokens == _BOS) - 1
    ar = np.arange(V)
    orders = [_Order(None, ar, None, ar, np.bincount(tokens, minlength=V))]
    prev = tokens  # index at order n-1 of the (n-1)-gram starting at each position
    for n in range(2, order + 1):
        m = L - n + 1
        pos = np.nonzero(sid[:m] == sid[n - 1:])[0] if m > 0 else np.zeros(0, np.int64)
        key = prev[pos] * V + tokens[pos + n - 1]
        uniq, first, inv, cnt = np.unique(key, return_index=True, return_inverse=True,
                                          return_counts=True)
        cur = np.full(max(m, 0), -1, dtype=np.int64)
        cur[pos] = inv.reshape(-1)
        p0 = pos[first]
        orders.append(_Order(uniq // V, uniq % V, prev[p0 + 1], tokens[p0], cnt))
        prev = cur
    adjusted = []
    for n in range(1, order + 1):
        o = orders[n - 1]
        if n == order:
            adjusted.append(o.raw.copy())
        else:
            cont = np.bincount(orders[n].suffix, minlength=o.size)
            adjusted.append(np.where(o.first == _BOS, o.raw, cont))
    adjusted[0][_BOS] = 0  # <s> is a context, never predicted
    return NGramCounts(vocab, orders, adjusted, n_sentences, L)


def _discounts(adj: np.ndarray) -> tuple[float, float, float]:
    """D1, D2, D3+ from the count-of-counts (fallback where the corpus is too small)."""
    t = np.bincount(np.minimum(adj[adj > 0], 5), minlength=6)[1:5].astype(np.float64)
    out = list(_FALLBACK_D)
    if t[0] > 0 and t[1] > 0:
        y = t[0] / (t[0] + 2 * t[1])
        for k in range(3):
            if t[k] > 0:
                d = (k + 1) - (k + 2) * y * t[k + 1] / t[k]
                if 0 < d <= k + 1:
                    out[k] = float(d)
    return out[0], out[1], out[2]


def _prune_masks(c: NGramCounts, prune: bool) -> list[np.ndarray]:
    """Which n-grams of each order are kept: all, or (``prune``) those of order >= 3 with an
    adjusted count above 1, plus every prefix and suffix of a kept n-gram."""
    keep = [np.ones(o.size, dtype=bool) for o in c.orders]
    if not prune:
        return keep
    N = len(c.orders)
    for n in range(N, 2, -1):
        keep[n - 1] = c.adjusted[n - 1] > 1
        if n < N:
            up = c.orders[n]
            keep[n - 1][up.prefix[keep[n]]] = True
            keep[n - 1][up.suffix[keep[n]]] = True
    return keep


def estimate(c: NGramCounts, prune: bool = False) -> dict:
    """Kneser-Ney probabilities of every n-gram and backoff weights of every context.

    Returns ``{"prob": [p per order], "bow": [gamma per order (1 where none)], "keep": [mask],
    "discounts": [(D1, D2, D3+) per order]}``; ``prob[n-1][i]`` is the model's p(w | h) of
    n-gram ``i`` of order n (through backoff where it is pruned).
    """
    V = len(c.vocab)
    keep = _prune_masks(c, prune)
    disc = [_discounts(a) for a in c.adjusted]
    a = c.adjusted[0].astype(np.float64)
    total = a.sum()
    if total <= 0:
        raise ValueError("the corpus holds no word")
    D = _discount_of(a, disc[0])
    p = (a - D) / total + (D.sum() / total) / (V - 1)
    p[_BOS] = 0.0
    probs, bows = [p], []
    for n in range(2, len(c.orders) + 1):
        o, a = c.orders[n - 1], c.adjusted[n - 1].astype(np.float64)
        size = c.orders[n - 2].size
        D = _discount_of(a, disc[n - 1])
        denom = np.bincount(o.prefix, weights=a, minlength=size)
        safe = np.where(denom > 0, denom, 1.0)
        gamma = np.bincount(o.prefix, weights=D, minlength=size) / safe
        low = probs[-1][o.suffix]
        d = (a - D) / safe[o.prefix]
        prob = d + gamma[o.prefix] * low
        k = keep[n - 1]
        pruned_d = np.bincount(o.prefix[~k], weights=d[~k], minlength=size)
        kept_low = np.bincount(o.prefix[k], weights=low[k], minlength=size)
        pruned_low = np.bincount(o.prefix[~k], weights=low[~k], minlength=size)
        bow = gamma + pruned_d / np.maximum(np.maximum(1.0 - kept_low, pruned_low), 1e-300)
        has_kept = np.bincount(o.prefix[k], minlength=size) > 0
        bow = np.where(has_kept, bow, 1.0)
        probs.append(np.where(k, prob, bow[o.prefix] * low))
        bows.append(bow)
    bows.append(np.ones(c.orders[-1].size))
    return {"prob": probs, "bow": bows, "keep": keep, "discounts": disc}


def _discount_of(a: np.ndarray, d: tuple[float, float, float]) -> np.ndarray:
    return np.select([a <= 0, a == 1, a == 2], [0.0, d[0], d[1]], d[2])


def _write_lines(f, lp: np.ndarray, cols: list[np.ndarray], bow: np.ndarray | None,
                 chunk: int = 1 << 20) -> None:
    """Write ``lp<TAB>w1 .. wn[<TAB>bow]`` lines: one %-format per chunk of lines (the fast
    way to format millions of floats and strings)."""
    n = len(cols)
    fmt = "%.7g\t" + " ".join(["%s"] * n) + ("\t%.7g\n" if bow is not None else "\n")
    for s in range(0, len(lp), chunk):
        e = min(s + chunk, len(lp))
        table = np.empty((e - s, n + 1 + (bow is not None)), dtype=object)
        table[:, 0] = lp[s:e].tolist()
        for j, c in enumerate(cols):
            table[:, j + 1] = c[s:e]
        if bow is not None:
            table[:, n + 1] = bow[s:e].tolist()
        f.write((fmt * (e - s)) % tuple(table.ravel().tolist()))


def write_arpa(path: str | os.PathLike, c: NGramCounts, est: dict) -> list[int]:
    """Write the model as an ARPA file; returns the n-gram count of each order. A backoff
    weight is written for the n-grams that are the context of a kept longer n-gram."""
    vocab = np.array(c.vocab, dtype=object)
    N = len(c.orders)
    words = [np.arange(len(vocab))[:, None]]
    for n in range(2, N + 1):
        o = c.orders[n - 1]
        words.append(np.concatenate([words[-1][o.prefix], o.last[:, None]], axis=1))
    has_ext = [np.zeros(o.size, dtype=bool) for o in c.orders]
    for n in range(2, N + 1):
        has_ext[n - 2][c.orders[n - 1].prefix[est["keep"][n - 1]]] = True
    counts = [int(k.sum()) for k in est["keep"]]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\\data\\\n" + "".join(f"ngram {n}={m}\n" for n, m in enumerate(counts, 1)))
        for n in range(1, N + 1):
            k = est["keep"][n - 1]
            with np.errstate(divide="ignore"):
                lp = np.log10(est["prob"][n - 1])
                bw = np.log10(est["bow"][n - 1])
            if n == 1:
                lp[_BOS] = -99.0
            f.write(f"\n\\{n}-grams:\n")
            for with_bow in (True, False):
                sel = np.nonzero(k & (has_ext[n - 1] == with_bow))[0]
                _write_lines(f, lp[sel], [vocab[words[n - 1][sel, j]] for j in range(n)],
                             bw[sel] if with_bow else None)
        f.write("\n\\end\\\n")
    return counts


@outputs.writes("lm")
def build_arpa(corpus=None, out: str | os.PathLike = "lm.arpa", *, order: int = 3,
               prune: bool = False, lines: Iterable[str] | None = None, overwrite: bool = False) -> dict:
    """Build an interpolated modified Kneser-Ney model of ``order`` from ``corpus`` (text
    file(s), one sentence a line) or ``lines``, write it to ``out`` as ARPA; returns a summary
    (sentences, words, vocabulary, n-grams per order, discounts, seconds). ``out`` follows
    fastbci's output rule (:mod:`fastbci.outputs`): never a corpus file, never a file fastbci
    did not write; an earlier ARPA file is replaced only with ``overwrite``."""
    t0 = time.perf_counter()
    files = [] if lines is not None else ([corpus] if isinstance(corpus, (str, os.PathLike))
                                          else list(corpus or []))
    vocab, tokens, n_sent = read_corpus(corpus, lines=lines)  # the inputs first, then the output
    outputs.check_file(out, inputs=[("corpus", c) for c in files], overwrite=overwrite)
    c = count_ngrams(vocab, tokens, n_sent, order)
    est = estimate(c, prune=prune)
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    counts = write_arpa(out, c, est)
    return {"out": str(out), "order": order, "prune": prune, "n_sentences": n_sent,
            "n_words": int(len(tokens) - 2 * n_sent), "vocab": len(vocab) - 3,
            "ngrams": counts, "pruned": [o.size - k for o, k in zip(c.orders, counts)],
            "discounts": [list(d) for d in est["discounts"]],
            "seconds": time.perf_counter() - t0}
