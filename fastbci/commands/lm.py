"""``fastbci lm build | decode | tune | rescore``: n-gram models, sentences and WER, tuning, LLM
rescoring (the library: :mod:`fastbci.lm`)."""
from __future__ import annotations

import argparse

from fastbci.commands.options import add_json, add_overwrite, integer, report
from fastbci.commands.words import (add_decoder, add_llm, add_nbest, decoder_kwargs, finite_list,
                                    llm_kwargs, llm_options, nbest_of, rescore_params)
from fastbci.lm.params import DEFAULT_LLM_NBEST

HELP = "words from phoneme logits: build an n-gram, decode, tune the decoder, rescore with an LLM"
DESCRIPTION = ("Words from phoneme logits: n-gram models, lexicon beam search, WER and the "
               "submission CSV, tuning, LLM rescoring of the n-best.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    b = sub.add_parser("build", help="build an interpolated modified Kneser-Ney n-gram (ARPA)")
    b.prog = "fastbci lm build"
    b.add_argument("--corpus", action="append", required=True,
                   help="text file, one sentence a line (repeat for several files)")
    b.add_argument("--order", type=integer("n-gram order", 1, 10), default=3,
                   help="n-gram order (default 3)")
    b.add_argument("--out", required=True, help="the ARPA file to write")
    b.add_argument("--prune", action="store_true", help="drop n-grams of order 3 and above seen once")
    add_overwrite(b, "an ARPA file")
    add_json(b)

    d = sub.add_parser("decode", help="decode logits to sentences: WER (val) and the id,text CSV")
    d.prog = "fastbci lm decode"
    d.add_argument("--logits", required=True, help="logits_SPLIT.npz written by fastbci evaluate")
    d.add_argument("--lm", required=True, help="n-gram LM: an ARPA file or a KenLM binary")
    d.add_argument("--out", default=None, help="CSV to write (default words_SPLIT.csv beside the logits)")
    add_nbest(d, file_help="write the n-best hypotheses with their scores to this CSV (for "
                           "'fastbci lm rescore')")
    d.add_argument("--rescored-out", default=None,
                   help="with --llm: the n-best ranked by the rescoring (CSV)")
    add_overwrite(d, "CSV files")
    add_json(d)
    add_decoder(d)
    add_llm(d)

    t = sub.add_parser("tune", help="search the LM weight and word score (and with --llm, "
                                    "llm_alpha) on the val split")
    t.prog = "fastbci lm tune"
    t.add_argument("--logits", required=True, help="logits_val.npz (with sentence_label)")
    t.add_argument("--lm", required=True, help="n-gram LM: an ARPA file or a KenLM binary")
    t.add_argument("--lm-weights", type=finite_list, default=None,
                   help="coarse grid of lm_weight (default 1,2,3; one value holds it fixed)")
    t.add_argument("--word-scores", type=finite_list, default=None,
                   help="coarse grid of word_score (default -1,0,1; one value holds it fixed)")
    t.add_argument("--rounds", type=integer("finer rounds around the best point", 0, 20), default=2,
                   help="finer rounds around the best point (default 2)")
    t.add_argument("--max-trials", type=integer("trials tuned on", 1, None), default=None,
                   help="tune on this many trials spread over the file (default all)")
    t.add_argument("--out", default=None,
                   help="YAML to write (default decoder_params.yaml beside the logits)")
    add_nbest(t)
    t.add_argument("--llm-alphas", type=finite_list, default=None,
                   help="with --llm: the llm_alpha values searched (default 0 to 2 by 0.05, 0 to 1 "
                        "for the convex form)")
    add_overwrite(t, "a parameter file")
    add_json(t)
    add_decoder(t, tuned=False)
    add_llm(t, alpha=False)

    r = sub.add_parser("rescore", help="rescore an n-best file (decode --nbest-file) with an LLM")
    r.prog = "fastbci lm rescore"
    r.add_argument("--nbest-file", required=True, help="the n-best CSV that decode --nbest-file wrote")
    r.add_argument("--logits", default=None,
                   help="the logits npz the n-best came from: its ids, and the WER on val")
    r.add_argument("--out", default=None, help="CSV to write (default words_rescored.csv beside the n-best)")
    r.add_argument("--rescored-out", default=None, help="the n-best ranked by the rescoring (CSV)")
    r.add_argument("--params", default=None,
                   help="parameter file (the one tune --llm writes): its rescore section")
    add_overwrite(r, "CSV files")
    add_json(r)
    add_llm(r, required=True)


def _summary(a: argparse.Namespace, s: dict, line: str) -> None:
    s.pop("texts", None)
    report(a, line, s)


def _build(a: argparse.Namespace) -> int:
    from fastbci.lm import build_arpa
    s = build_arpa(a.corpus, a.out, order=a.order, prune=a.prune, overwrite=a.overwrite)
    _summary(a, s, f"wrote {s['out']}: order {s['order']}, {s['n_sentences']} sentences, "
                   f"{s['n_words']} words, vocabulary {s['vocab']}, n-grams "
                   f"{' / '.join(map(str, s['ngrams']))}"
                   + (f" (pruned {' / '.join(map(str, s['pruned']))})" if s["prune"] else "")
                   + f", {s['seconds']:.1f} s")
    return 0


def _wer_line(s: dict) -> str:
    return f"WER: {100 * s['wer']:.2f}%" if s.get("wer") is not None else "no labels: no WER"


def _decode(a: argparse.Namespace) -> int:
    from fastbci.lm import decode_file
    if a.rescored_out and not a.llm:
        raise ValueError("--rescored-out needs --llm (the rescoring's model)")
    s = decode_file(a.logits, a.lm, out=a.out, nbest=nbest_of(a), nbest_out=a.nbest_file,
                    rescored_out=a.rescored_out, overwrite=a.overwrite,
                    inputs=[("decoder parameter file", a.params)], **decoder_kwargs(a), **llm_kwargs(a))
    _summary(a, s, _wer_line(s))
    return 0


def _tune(a: argparse.Namespace) -> int:
    from fastbci.lm.tune import DEFAULT_LM_WEIGHTS, DEFAULT_WORD_SCORES, tune
    r = tune(a.logits, a.lm, lm_weights=a.lm_weights or DEFAULT_LM_WEIGHTS,
             word_scores=a.word_scores or DEFAULT_WORD_SCORES, rounds=a.rounds, max_trials=a.max_trials,
             out=a.out, llm_nbest=a.nbest or DEFAULT_LLM_NBEST, llm_alphas=a.llm_alphas,
             overwrite=a.overwrite, **decoder_kwargs(a), **llm_kwargs(a))
    line = (f"best WER {100 * r['wer']:.2f}% at lm_weight {r['best'].lm_weight:g}, word_score "
            f"{r['best'].word_score:g}"
            + (f", llm_alpha {r['rescore'].llm_alpha:g} (WER {100 * r['wer_llm']:.2f}% with the LLM)"
               if r.get("rescore") else "") + f": {r['file']}")
    out = {"wer": r["wer"], "best": r["best"].to_dict(), "file": r["file"],
           "searched": [[k[0], k[1], v] for k, v in r["searched"]]}
    if r.get("rescore"):
        out.update(rescore=r["rescore"].to_dict(), wer_llm=r["wer_llm"])
    _summary(a, out, line)
    return 0


def _rescore(a: argparse.Namespace) -> int:
    from fastbci.lm import rescore_file
    s = rescore_file(a.nbest_file, a.llm, params=rescore_params(a), out=a.out,
                     rescored_out=a.rescored_out, logits=a.logits, llm_options=llm_options(a),
                     overwrite=a.overwrite, inputs=[("parameter file", a.params)])
    _summary(a, s, _wer_line(s))
    return 0


def run(a: argparse.Namespace) -> int:
    return {"build": _build, "decode": _decode, "tune": _tune, "rescore": _rescore}[a.subcommand](a)
