"""Tuning the LM weight and the word score on the val split: a grid, then finer grids.

``python -m fastbci.lm tune --logits logits_val.npz --lm LM.arpa``: decode the val trials at
every point of a coarse grid of (``lm_weight``, ``word_score``) on all cores (the decoding
processes keep the lexicon and the LM loaded between points), then ``rounds`` times around the
best point with half the previous steps; points already decoded are not decoded again. The
best parameters (lowest WER; ties go to the point nearer the grid's centre) are written to a
YAML file that ``decode --params`` and ``fastbci.evaluate --lm-params`` read.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml

from .params import DecoderParams
from .run import _days, _labels, load_logits
from .text import wer_report

__all__ = ["tune"]

DEFAULT_LM_WEIGHTS = (1.0, 2.0, 3.0)
DEFAULT_WORD_SCORES = (-1.0, 0.0, 1.0)


def _steps(values: Sequence[float]) -> float:
    v = sorted(set(values))
    return min(np.diff(v)) if len(v) > 1 else max(abs(v[0]) / 2, 0.5)


def tune(logits: str | os.PathLike, lm: str | os.PathLike, *, params: DecoderParams | None = None,
         lm_weights: Sequence[float] = DEFAULT_LM_WEIGHTS, word_scores: Sequence[float] = DEFAULT_WORD_SCORES,
         rounds: int = 2, max_trials: int | None = None, workers: int | None = None, lexicon=None,
         cmudict=None, use_cmudict: bool = True, out: str | os.PathLike | None = None,
         say: Callable[[str], None] | None = None) -> dict:
    """Search (lm_weight, word_score) for the lowest WER; returns ``{"best": params, "wer",
    "searched": [(lm_weight, word_score, wer)], "file"}`` and writes the YAML (``out``, default
    ``decoder_params.yaml`` beside the logits)."""
    from .decoder import DecodePool, WordDecoder, cpu_count, split_packed

    say = say or (lambda s: print(s, file=sys.stderr))
    logits = Path(logits)
    data = load_logits(logits)
    labels = _labels(data)
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
    dec = WordDecoder(lm, lexicon, cmudict=cmudict, use_cmudict=use_cmudict, params=base)
    centre = (float(np.median(lm_weights)), float(np.median(word_scores)))
    seen: dict[tuple[float, float], float] = {}
    t0 = time.perf_counter()

    # the pool serves every point: a worker pays its start for 8 arrays already
    with DecodePool(dec, min(workers or cpu_count(), max(1, len(arrays) // 8))) as pool:
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

        say(f"Tuning on {len(arrays)} trials of {logits}: {len(lm_weights)} x {len(word_scores)} grid, "
            f"then {rounds} finer round(s)")
        run([(lw, ws) for lw in lm_weights for ws in word_scores])
        d_lw, d_ws = _steps(lm_weights), _steps(word_scores)
        for _ in range(max(0, rounds)):
            d_lw, d_ws = d_lw / 2, d_ws / 2
            lw0, ws0 = best()
            run([(max(0.0, lw0 + a * d_lw), ws0 + b * d_ws) for a in (-1, 0, 1) for b in (-1, 0, 1)])
    lw, ws = best()
    chosen = base.replace(lm_weight=lw, word_score=ws)
    out = Path(out) if out is not None else logits.parent / "decoder_params.yaml"
    record = {"decoder": chosen.to_dict(),
              "tuned": {"wer": float(seen[(lw, ws)]), "logits": str(logits), "lm": str(lm),
                        "n_trials": len(arrays), "seconds": round(time.perf_counter() - t0, 1),
                        "searched": [[k[0], k[1], float(v)] for k, v in sorted(seen.items())]}}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        f.write("# written by python -m fastbci.lm tune; use with: python -m fastbci.lm decode "
                "--params THIS_FILE ...\n")
        yaml.safe_dump(record, f, sort_keys=False, default_flow_style=None)
    say(f"Best: lm_weight {lw:g}, word_score {ws:g}: WER {100 * seen[(lw, ws)]:.2f}% "
        f"({len(seen)} points in {time.perf_counter() - t0:.0f} s); wrote {out}")
    return {"best": chosen, "wer": seen[(lw, ws)], "searched": sorted(seen.items()), "file": str(out)}
