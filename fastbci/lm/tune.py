"""Tuning the LM weight and the word score on the val split: a grid, then finer grids.

``fastbci lm tune --logits logits_val.npz --lm LM.arpa``: decode the val trials at
every point of a coarse grid of (``lm_weight``, ``word_score``) on all cores (the decoding
processes keep the lexicon and the LM loaded between points), then ``rounds`` times around the
best point with half the previous steps; points already decoded are not decoded again. The
best parameters (lowest WER; ties go to the point nearer the grid's centre) are written to a
YAML file that ``decode --params`` and ``fastbci.evaluate --lm-params`` read.

With an LLM (``--llm``), ``llm_alpha`` is searched next, on the n-best lists (``nbest``
hypotheses per trial) that the best (``lm_weight``, ``word_score``) point gives: the LLM reads
every hypothesis once, then each ``llm_alpha`` of the grid only re-ranks the lists. The n-gram
weights are not searched again with the LLM in the loop (that would need the n-best of every
point scored by the LLM). The value goes to the file's ``rescore:`` section.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml

from fastbci import outputs
from fastbci.fileio import atomic_path

from .params import DecoderParams, RescoreParams
from .run import _days, _labels, load_logits
from .text import wer_report

__all__ = ["tune"]

DEFAULT_LM_WEIGHTS = (1.0, 2.0, 3.0)
DEFAULT_WORD_SCORES = (-1.0, 0.0, 1.0)


def _steps(values: Sequence[float]) -> float:
    """The finer rounds' first step along a grid axis: its smallest spacing; 0 for a grid of one
    value, which holds that parameter fixed."""
    v = sorted(set(values))
    return float(min(np.diff(v))) if len(v) > 1 else 0.0


def default_llm_alphas(formula: str) -> list[float]:
    """The llm_alpha grid: 0 to 2 by 0.05 (additive), 0 to 1 by 0.05 (convex)."""
    top = 2.0 if formula == "additive" else 1.0
    return [round(float(x), 4) for x in np.arange(0.0, top + 1e-9, 0.05)]


def _search_llm_alpha(hyps: list, labels: list[str], days, scorer, rescore: RescoreParams,
                      alphas: Sequence[float], say) -> tuple[float, dict]:
    """The llm_alpha of ``alphas`` with the lowest WER on these n-best lists (ties: the
    middle one of the best) and the search's record."""
    from .rescore import NBest, best_indices, score_nbest
    nbests = [NBest.from_hypotheses(h) for h in hyps]
    lp = score_nbest(scorer, nbests, rescore.llm_text)
    say(f"LLM {scorer.source}: {sum(len(n) for n in nbests)} hypotheses scored in "
        f"{scorer.stats['seconds']:.1f} s")
    wers = {}
    for a in sorted({round(float(x), 6) for x in alphas}):
        pick = best_indices(nbests, lp, rescore.replace(llm_alpha=a))
        w = wer_report(labels, [nb.texts[k] if k >= 0 else "" for nb, k in zip(nbests, pick)], days)["wer"]
        wers[a] = w if w is not None else float("inf")
        say(f"  llm_alpha {a:g}: WER {100 * wers[a]:.2f}%")
    low = min(wers.values())
    tied = [a for a, w in wers.items() if w == low]
    best = tied[len(tied) // 2]
    decoder_top1 = wer_report(labels, [h[0].text if h else "" for h in hyps])["wer"]
    return best, {"model": scorer.source, "formula": rescore.formula, "nbest": max(len(n) for n in nbests),
                  "wer": float(low), "wer_decoder_top1": decoder_top1,
                  "searched": [[a, float(w)] for a, w in wers.items()]}


def _write(out: Path, record: dict) -> None:
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        f.write("# written by fastbci lm tune; use with: fastbci lm decode "
                "--params THIS_FILE ...\n")
        yaml.safe_dump(record, f, sort_keys=False, default_flow_style=None)


def _grid(pool, arrays, labels, days, base: DecoderParams, lm_weights, word_scores, rounds: int,
          say) -> tuple[dict, tuple[float, float]]:
    """The coarse grid then ``rounds`` finer ones: ``({(lm_weight, word_score): wer}, best)``."""
    centre = (float(np.median(lm_weights)), float(np.median(word_scores)))
    seen: dict[tuple[float, float], float] = {}

    def run(points):
        for lw, ws in points:
            key = (round(float(lw), 6), round(float(ws), 6))
            if key in seen:
                continue
            hyps = pool.decode(arrays, params=base.replace(lm_weight=key[0], word_score=key[1]))
            rep = wer_report(labels, [h[0].text if h else "" for h in hyps], days)
            seen[key] = rep["wer"] if rep["wer"] is not None else float("inf")
            say(f"  lm_weight {key[0]:g}, word_score {key[1]:g}: WER {100 * seen[key]:.2f}%")

    def best():
        return min(seen, key=lambda k: (seen[k], abs(k[0] - centre[0]) + abs(k[1] - centre[1])))

    run([(lw, ws) for lw in lm_weights for ws in word_scores])
    d_lw, d_ws = _steps(lm_weights), _steps(word_scores)
    for _ in range(max(0, rounds)):
        d_lw, d_ws = d_lw / 2, d_ws / 2
        lw0, ws0 = best()
        run([(max(0.0, lw0 + a * d_lw), ws0 + b * d_ws) for a in (-1, 0, 1) for b in (-1, 0, 1)])
    return seen, best()


@outputs.writes("lm")
def tune(logits: str | os.PathLike, lm: str | os.PathLike, *, params: DecoderParams | None = None,
         lm_weights: Sequence[float] = DEFAULT_LM_WEIGHTS, word_scores: Sequence[float] = DEFAULT_WORD_SCORES,
         rounds: int = 2, max_trials: int | None = None, workers: int | None = None, lexicon=None,
         cmudict=None, use_cmudict: bool = True, out: str | os.PathLike | None = None,
         llm=None, rescore: RescoreParams | None = None, llm_options: dict | None = None,
         llm_nbest: int = 100, llm_alphas: Sequence[float] | None = None,
         say: Callable[[str], None] | None = None, overwrite: bool = False) -> dict:
    """Search (lm_weight, word_score) for the lowest WER, then with ``llm`` (a model folder /
    hub id or an :class:`~fastbci.lm.LLMScorer`) llm_alpha; returns ``{"best": params, "wer",
    "searched": [(lm_weight, word_score, wer)], "file"}`` (with ``llm``: also ``"rescore"``,
    ``"wer_llm"``) and writes the YAML (``out``, default ``decoder_params.yaml`` beside the
    logits; fastbci's output rule, :mod:`fastbci.outputs`, checked first: an earlier file is
    replaced only with ``overwrite``)."""
    from .decoder import DecodePool, WordDecoder, cpu_count, split_packed
    from .rescore import scorer_of

    say = say or (lambda s: print(s, file=sys.stderr))
    logits = Path(logits)
    data = load_logits(logits)  # the inputs first, then the output
    labels = _labels(data)
    out = Path(out) if out is not None else logits.parent / "decoder_params.yaml"
    outputs.check_file(out, inputs=[("logits file", logits), ("LM", lm), ("lexicon", lexicon),
                                    ("CMU dictionary", cmudict)],
                       overwrite=overwrite)
    if labels is None:
        raise ValueError(f"{logits} has no sentence_label: tune on the val split's logits")
    if not lm_weights or not word_scores:
        raise ValueError("tune needs at least one LM weight and one word score")
    arrays = split_packed(data["logits"], data["offsets"])
    days = _days(data)
    if max_trials is not None and 0 < max_trials < len(arrays):
        pick = np.unique(np.linspace(0, len(arrays) - 1, max_trials).round().astype(int))
        arrays = [arrays[i] for i in pick]
        labels = [labels[i] for i in pick]
        days = [days[i] for i in pick] if days is not None else None
    base = (params or DecoderParams()).replace(nbest=1)
    rescore = rescore or RescoreParams()
    scorer = scorer_of(llm, llm_options) if llm is not None else None  # fail before the search
    dec = WordDecoder(lm, lexicon, cmudict=cmudict, use_cmudict=use_cmudict, params=base)
    t0 = time.perf_counter()
    say(f"Tuning on {len(arrays)} trials of {logits}: {len(lm_weights)} x {len(word_scores)} grid, "
        f"then {rounds} finer round(s)")
    # the pool serves every point: a worker pays its start for 8 arrays already
    with DecodePool(dec, min(workers or cpu_count(), max(1, len(arrays) // 8))) as pool:
        seen, (lw, ws) = _grid(pool, arrays, labels, days, base, lm_weights, word_scores, rounds, say)
        chosen = base.replace(lm_weight=lw, word_score=ws)
        if scorer is not None:
            say(f"Searching llm_alpha on the {llm_nbest}-best lists of lm_weight {lw:g}, word_score {ws:g}")
            hyps = pool.decode(arrays, params=chosen.replace(nbest=llm_nbest))
            alpha, llm_record = _search_llm_alpha(hyps, labels, days, scorer, rescore,
                                                  llm_alphas or default_llm_alphas(rescore.formula), say)
    record = {"decoder": chosen.to_dict(),
              "tuned": {"wer": float(seen[(lw, ws)]), "logits": str(logits), "lm": str(lm),
                        "n_trials": len(arrays), "seconds": round(time.perf_counter() - t0, 1),
                        "searched": [[k[0], k[1], float(v)] for k, v in sorted(seen.items())]}}
    result = {"best": chosen, "wer": seen[(lw, ws)], "searched": sorted(seen.items()), "file": str(out)}
    if scorer is not None:
        result["rescore"] = rescore.replace(llm_alpha=alpha)
        result["wer_llm"] = llm_record["wer"]
        record["rescore"] = result["rescore"].to_dict()
        record["tuned"]["llm"] = llm_record
    _write(out, record)
    say(f"Best: lm_weight {lw:g}, word_score {ws:g}: WER {100 * seen[(lw, ws)]:.2f}% "
        f"({len(seen)} points in {time.perf_counter() - t0:.0f} s)"
        + (f"; llm_alpha {alpha:g}: WER {100 * llm_record['wer']:.2f}%" if scorer is not None else "")
        + f"; wrote {out}")
    return result
