"""The word decoder's and the LLM rescoring's parameters: defaults, meaning, YAML files (the
command-line options are in fastbci.commands.words).

This module imports no flashlight-text code, so ``fastbci.evaluate`` can offer the options on
any machine. Scores are added along a hypothesis: the acoustic log-probabilities (natural
log, after ``log_softmax``), ``lm_weight`` times the LM's log10-probabilities,
``word_score`` per word, ``sil_score`` per silence frame.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Mapping


__all__ = ["DEFAULT_LLM_NBEST", "FORMULAS", "LLM_TEXT", "PARAM_HELP", "DecoderParams", "RescoreParams"]


#: what each parameter does (also the command-line help)
PARAM_HELP = {
    "beam_size": "hypotheses kept after each frame (larger: slower, a little more accurate)",
    "beam_size_token": "classes tried per frame, the most probable first (41: all)",
    "beam_threshold": "drop hypotheses scoring this much below the best one (natural-log units)",
    "lm_weight": "weight of the n-gram's log10-probabilities against the acoustic natural-log ones",
    "word_score": "added for every word (positive: more, shorter words; negative: fewer)",
    "sil_score": "added for every frame spent in silence",
    "unk_score": "score of a spelling that is no lexicon word (-inf: never output <unk>)",
    "blank_penalty": "subtracted from the blank's log-probability in every frame (0: none)",
    "log_add": "merge hypotheses that reach the same state by log-add of their scores (else max)",
    "nbest": "hypotheses returned per utterance (distinct sentences, best first)",
}


@dataclass
class DecoderParams:
    """Beam-search settings of :class:`fastbci.lm.WordDecoder`; :data:`PARAM_HELP` says what
    each does."""

    beam_size: int = 500
    beam_size_token: int = 41
    beam_threshold: float = 15.0
    lm_weight: float = 2.0
    word_score: float = 0.0
    sil_score: float = 0.0
    unk_score: float = -math.inf
    blank_penalty: float = 0.0
    log_add: bool = False
    nbest: int = 1

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            want = int if f.type in ("int", int) else bool if f.type in ("bool", bool) else float
            if want is bool:
                if not isinstance(v, bool):
                    raise ValueError(f"decoder parameter {f.name} must be true or false, got {v!r}")
                continue
            try:
                v2 = want(v)
            except (TypeError, ValueError):
                raise ValueError(f"decoder parameter {f.name} must be a number, got {v!r}") from None
            if want is int and v2 != v:
                raise ValueError(f"decoder parameter {f.name} must be an integer, got {v!r}")
            if want is float and math.isnan(v2):
                raise ValueError(f"decoder parameter {f.name} is NaN")
            setattr(self, f.name, v2)
        for name in ("beam_size", "beam_size_token", "nbest"):
            if getattr(self, name) < 1:
                raise ValueError(f"decoder parameter {name} must be >= 1, got {getattr(self, name)}")
        if self.beam_threshold <= 0:
            raise ValueError(f"decoder parameter beam_threshold must be > 0, got {self.beam_threshold}")

    def replace(self, **changes) -> "DecoderParams":
        """A copy with ``changes`` (None values are ignored)."""
        d = asdict(self)
        d.update({k: v for k, v in changes.items() if v is not None})
        return DecoderParams.from_mapping(d)

    def to_dict(self) -> dict:
        d = asdict(self)
        if math.isinf(d["unk_score"]):
            d["unk_score"] = "-inf" if d["unk_score"] < 0 else "inf"
        return d

    @classmethod
    def from_mapping(cls, m: Mapping, where: str = "decoder parameters") -> "DecoderParams":
        names = {f.name for f in fields(cls)}
        bad = sorted(set(m) - names)
        if bad:
            raise ValueError(f"{where}: unknown decoder parameter(s) {bad}; known: {sorted(names)}")
        d = dict(m)
        if isinstance(d.get("unk_score"), str):
            d["unk_score"] = float(d["unk_score"])
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "DecoderParams":
        """Parameters from a YAML file: a mapping of parameters, or one under ``decoder:`` (the
        file ``fastbci lm tune`` writes)."""
        from fastbci.config import read_yaml
        path = Path(path)
        data = read_yaml(path, "decoder parameter file")
        if isinstance(data, Mapping) and isinstance(data.get("decoder"), Mapping):
            data = data["decoder"]
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: want a mapping of decoder parameters")
        try:
            return cls.from_mapping(data, where=str(path))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# rescoring the n-best with a large language model (fastbci.lm.rescore)
# ---------------------------------------------------------------------------------------------
#: the rescoring formulas: ``additive`` (the lab's flashlight + KenLM decoder), ``convex`` (the
#: official OPT rescoring); docs/words.md states both
FORMULAS = ("additive", "convex")
#: what the LLM reads: the sentence as decoded (lower case, no punctuation), or with its first
#: letter and the pronoun "i" upper-cased
LLM_TEXT = ("as-decoded", "sentence")
#: the LLM's n-best size when none is given (the official pipeline's and the lab's)
DEFAULT_LLM_NBEST = 100


@dataclass
class RescoreParams:
    """How an n-best hypothesis is scored once the LLM has read it (natural-log ``llm``):

    * ``additive``: ``score + llm_alpha * llm``, where ``score`` is the decoder's own total
      ``acoustic + lm_weight * ngram + word_score * n_words (+ sil_score * silence frames)``;
    * ``convex``: ``acoustic_scale * acoustic + (1 - llm_alpha) * ln(10) * ngram + llm_alpha * llm``.

    ``acoustic`` is the natural-log sum over the path's frames, ``ngram`` the n-gram's log10
    probability (KenLM's unit, converted to natural log by the convex form)."""

    llm_alpha: float = 0.55
    formula: str = "additive"
    acoustic_scale: float = 0.325
    llm_text: str = "as-decoded"

    def __post_init__(self):
        for name in ("llm_alpha", "acoustic_scale"):
            try:
                v = float(getattr(self, name))
            except (TypeError, ValueError):
                raise ValueError(f"rescoring parameter {name} must be a number, got "
                                 f"{getattr(self, name)!r}") from None
            if not math.isfinite(v):
                raise ValueError(f"rescoring parameter {name} must be finite, got {v}")
            setattr(self, name, v)
        if self.formula not in FORMULAS:
            raise ValueError(f"rescoring formula must be one of {FORMULAS}, got {self.formula!r}")
        if self.llm_text not in LLM_TEXT:
            raise ValueError(f"llm_text must be one of {LLM_TEXT}, got {self.llm_text!r}")

    def replace(self, **changes) -> "RescoreParams":
        """A copy with ``changes`` (None values are ignored)."""
        d = asdict(self)
        d.update({k: v for k, v in changes.items() if v is not None})
        return RescoreParams(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "RescoreParams":
        """The ``rescore:`` section of a parameter file (the one ``tune --llm`` writes); the
        defaults when the file has none."""
        from fastbci.config import read_yaml
        data = read_yaml(path, "decoder parameter file")
        section = data.get("rescore") if isinstance(data, Mapping) else None
        if section is None:
            return cls()
        names = {f.name for f in fields(cls)}
        if not isinstance(section, Mapping) or set(section) - names:
            raise ValueError(f"{path}: 'rescore' must map some of {sorted(names)} to values, got "
                             f"{section!r}")
        try:
            return cls(**section)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
