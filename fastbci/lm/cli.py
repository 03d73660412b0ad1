"""``python -m fastbci.lm build | decode | tune | rescore``: n-gram models, sentences and WER,
tuning, LLM rescoring.

* ``build --corpus TEXT [--corpus MORE] --order N --out LM.arpa [--prune]``
* ``decode --logits logits_val.npz --lm LM [--out CSV] [--nbest K --nbest-out FILE] [--llm MODEL]
  [decoder and LLM options]``
* ``tune --logits logits_val.npz --lm LM [--lm-weights 1,2,3] [--word-scores -1,0,1] [--llm MODEL]
  [--out YAML]``
* ``rescore --nbest NBEST.csv --llm MODEL [--llm-alpha A] [--out CSV] [--rescored-out FILE]``

Exit status (shared by every fastbci command, :mod:`fastbci.errors`): 0 done; 2 bad input (a
message naming the file); 5 flashlight-text (``pip install 'fastbci[lm]'``) or transformers
(``pip install 'fastbci[llm]'``) is not installed.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from .params import (DEFAULT_LLM_NBEST, add_decoder_args, add_llm_args, decoder_kwargs, llm_options,
                     rescore_from_args)

from fastbci.errors import run_command


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated numbers, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastbci.lm",
                                description="Words from phoneme logits: n-gram models, lexicon beam "
                                            "search, WER and the submission CSV.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build an interpolated modified Kneser-Ney n-gram (ARPA)")
    b.add_argument("--corpus", action="append", required=True,
                   help="text file, one sentence a line (repeat for several files)")
    b.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    b.add_argument("--out", required=True, help="the ARPA file to write")
    b.add_argument("--prune", action="store_true",
                   help="drop n-grams of order 3 and above seen once")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")

    d = sub.add_parser("decode", help="decode logits to sentences: WER (val) and the id,text CSV")
    d.add_argument("--logits", required=True, help="logits_SPLIT.npz written by python -m fastbci.evaluate")
    d.add_argument("--lm", required=True, help="n-gram LM: an ARPA file or a KenLM binary")
    d.add_argument("--out", default=None, help="CSV to write (default words_SPLIT.csv beside the logits)")
    d.add_argument("--nbest", type=int, default=None,
                   help=f"hypotheses kept per trial for --nbest-out and --llm (default 1, "
                        f"{DEFAULT_LLM_NBEST} with --llm)")
    d.add_argument("--nbest-out", default=None, help="write the n-best hypotheses with their scores (CSV)")
    d.add_argument("--rescored-out", default=None,
                   help="with --llm: the n-best ranked by the rescoring (CSV)")
    d.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_decoder_args(d)
    add_llm_args(d)

    t = sub.add_parser("tune", help="search the LM weight and word score on the val split")
    t.add_argument("--logits", required=True, help="logits_val.npz (with sentence_label)")
    t.add_argument("--lm", required=True, help="n-gram LM: an ARPA file or a KenLM binary")
    t.add_argument("--lm-weights", type=_floats, default=None, help="coarse grid (default 1,2,3)")
    t.add_argument("--word-scores", type=_floats, default=None, help="coarse grid (default -1,0,1)")
    t.add_argument("--rounds", type=int, default=2, help="finer rounds around the best point (default 2)")
    t.add_argument("--max-trials", type=int, default=None,
                   help="tune on this many trials spread over the file (default all)")
    t.add_argument("--out", default=None,
                   help="YAML to write (default decoder_params.yaml beside the logits)")
    t.add_argument("--nbest", type=int, default=DEFAULT_LLM_NBEST,
                   help=f"with --llm: hypotheses per trial rescored to search llm_alpha (default "
                        f"{DEFAULT_LLM_NBEST})")
    t.add_argument("--llm-alphas", type=_floats, default=None,
                   help="with --llm: the llm_alpha values searched (default 0 to 2 by 0.05, 0 to 1 "
                        "for the convex form)")
    add_decoder_args(t)
    add_llm_args(t)

    r = sub.add_parser("rescore", help="rescore an n-best file (decode --nbest-out) with an LLM")
    r.add_argument("--nbest", required=True, help="the n-best CSV that decode --nbest-out wrote")
    r.add_argument("--logits", default=None,
                   help="the logits npz the n-best came from: its ids, and the WER on val")
    r.add_argument("--out", default=None, help="CSV to write (default words_rescored.csv beside the n-best)")
    r.add_argument("--rescored-out", default=None, help="the n-best ranked by the rescoring (CSV)")
    r.add_argument("--params", default=None,
                   help="parameter file (the one tune --llm writes): its rescore section")
    r.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_llm_args(r, required=True)
    return p


def _build(a: argparse.Namespace) -> int:
    from .ngram import build_arpa
    s = build_arpa(a.corpus, a.out, order=a.order, prune=a.prune)
    if a.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"wrote {s['out']}: order {s['order']}, {s['n_sentences']} sentences, {s['n_words']} words, "
          f"vocabulary {s['vocab']}, n-grams {' / '.join(map(str, s['ngrams']))}"
          + (f" (pruned {' / '.join(map(str, s['pruned']))})" if s["prune"] else "")
          + f", {s['seconds']:.1f} s")
    return 0


def _llm_kwargs(a: argparse.Namespace) -> dict:
    if a.llm is None:
        return {}
    return {"llm": a.llm, "rescore": rescore_from_args(a), "llm_options": llm_options(a)}


def _print_summary(a: argparse.Namespace, s: dict) -> None:
    if a.json:
        s.pop("texts")
        print(json.dumps(s, indent=1))
    elif s["wer"] is not None:
        print(f"WER: {100 * s['wer']:.2f}%")


def _decode(a: argparse.Namespace) -> int:
    from .run import decode_file
    nbest = a.nbest if a.nbest is not None else (DEFAULT_LLM_NBEST if a.llm else 1)
    if nbest < 1:
        raise ValueError(f"--nbest must be >= 1, got {nbest}")
    if a.rescored_out and not a.llm:
        raise ValueError("--rescored-out needs --llm (the rescoring's model)")
    s = decode_file(a.logits, a.lm, out=a.out, nbest=nbest, nbest_out=a.nbest_out,
                    rescored_out=a.rescored_out, **decoder_kwargs(a), **_llm_kwargs(a))
    _print_summary(a, s)
    return 0


def _tune(a: argparse.Namespace) -> int:
    from .tune import DEFAULT_LM_WEIGHTS, DEFAULT_WORD_SCORES, tune
    r = tune(a.logits, a.lm, lm_weights=a.lm_weights or DEFAULT_LM_WEIGHTS,
             word_scores=a.word_scores or DEFAULT_WORD_SCORES, rounds=a.rounds, max_trials=a.max_trials,
             out=a.out, llm_nbest=a.nbest, llm_alphas=a.llm_alphas, **decoder_kwargs(a), **_llm_kwargs(a))
    print(f"best WER {100 * r['wer']:.2f}% at lm_weight {r['best'].lm_weight:g}, word_score "
          f"{r['best'].word_score:g}"
          + (f", llm_alpha {r['rescore'].llm_alpha:g} (WER {100 * r['wer_llm']:.2f}% with the LLM)"
             if r.get("rescore") else "") + f": {r['file']}")
    return 0


def _rescore(a: argparse.Namespace) -> int:
    from .run import rescore_file
    s = rescore_file(a.nbest, a.llm, params=rescore_from_args(a), out=a.out, rescored_out=a.rescored_out,
                     logits=a.logits, llm_options=llm_options(a))
    _print_summary(a, s)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    command = {"build": _build, "decode": _decode, "tune": _tune, "rescore": _rescore}[a.command]
    return run_command(lambda: command(a), prog=f"fastbci.lm {a.command}")
