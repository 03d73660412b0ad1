"""From an evaluation's logits file to sentences, WER and the submission CSV.

:func:`decode_file` is what ``python -m fastbci.lm decode`` and ``python -m fastbci.evaluate
--lm`` run: read ``logits_{split}.npz`` (packed raw logits, see ``fastbci.evaluate``), decode
every trial on all cores, score against the normalised ``sentence_label`` when the file has
one (val), and write ``id,text`` rows (the official evaluation's output and the competition's
submission format) plus, on request, an n-best file for later rescoring.
"""
from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fastbci.data.phonemes import N_CLASSES

from .params import DecoderParams
from .text import wer_report

__all__ = ["check_ready", "load_logits", "decode_file", "format_wer", "write_csv", "write_nbest"]


def load_logits(path: str | os.PathLike) -> dict:
    """The arrays of an evaluation npz, checked: ``logits`` (frames, 41), ``offsets``, ``ids``,
    and when present ``session``, ``day``, ``sentence_label``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the logits file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .npz file ({e})") from None
    for key in ("logits", "offsets"):
        if key not in data:
            raise ValueError(f"{path} has no '{key}' array (want the logits_SPLIT.npz that "
                             "python -m fastbci.evaluate writes)")
    lg, off = data["logits"], data["offsets"].astype(np.int64)
    if lg.ndim != 2 or lg.shape[1] != N_CLASSES:
        raise ValueError(f"{path}: the logits have shape {lg.shape}; want (frames, {N_CLASSES}) "
                         "(blank, 39 phonemes, silence)")
    if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != len(lg) or (np.diff(off) < 0).any():
        raise ValueError(f"{path}: the offsets do not rise from 0 to the {len(lg)} logit frames")
    n = len(off) - 1
    data["offsets"] = off
    data.setdefault("ids", np.arange(n))
    for key in ("ids", "session", "day", "sentence_label"):
        if key in data and len(data[key]) != n:
            raise ValueError(f"{path}: '{key}' has {len(data[key])} entries for {n} trials")
    return data


def write_csv(path: str | os.PathLike, ids: Sequence, texts: Sequence[str]) -> Path:
    """``id,text`` rows with a header (the official evaluation's and the submission format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i, t in zip(ids, texts):
            w.writerow([int(i), t])
    return path


def write_nbest(path: str | os.PathLike, ids: Sequence, nbest: Sequence, lm_weight: float) -> Path:
    """``id,rank,score,acoustic_score,lm_score,lm_weight,n_words,text`` rows: the top
    hypotheses of each trial with their summed acoustic log-probability (natural log) and LM
    log10-probability, for rescoring with another model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "rank", "score", "acoustic_score", "lm_score", "lm_weight", "n_words", "text"])
        for i, hyps in zip(ids, nbest):
            for r, h in enumerate(hyps):
                w.writerow([int(i), r, f"{h.score:.6f}", f"{h.acoustic:.6f}", f"{h.lm:.6f}", lm_weight,
                            h.n_words, h.text])
    return path


def _labels(data: dict) -> list[str] | None:
    lab = data.get("sentence_label")
    return None if lab is None else [str(s) for s in lab.tolist()]


def _days(data: dict):
    if "session" in data:
        return [str(s) for s in data["session"].tolist()]
    if "day" in data:
        return [int(d) for d in data["day"].tolist()]
    return None


def format_wer(rep: dict) -> list[str]:
    """Printable lines: WER per day, then overall."""
    lines = [f"  {d}: WER {100 * r['wer']:.2f}% ({r['errors']}/{r['words']} words)"
             for d, r in rep["by_day"].items() if r["wer"] is not None]
    if rep["wer"] is not None:
        lines.append(f"WER {100 * rep['wer']:.2f}% ({rep['errors']} word errors / {rep['words']} words, "
                     f"{rep['n_sentences']} sentences)")
    return lines


def check_ready(lm: str | os.PathLike) -> None:
    """Fail early (before an evaluation runs a model) when the LM file is missing or
    flashlight-text cannot be imported."""
    from .decoder import _flashlight
    if not Path(lm).is_file():
        raise FileNotFoundError(f"the LM file {lm} does not exist")
    _flashlight()


def decode_file(logits: str | os.PathLike, lm: str | os.PathLike, *, out: str | os.PathLike | None = None,
                params: DecoderParams | None = None, lexicon=None, cmudict=None, use_cmudict: bool = True,
                workers: int | None = None, nbest: int = 1, nbest_out: str | os.PathLike | None = None,
                say: Callable[[str], None] | None = None) -> dict:
    """Decode an evaluation npz to sentences; WER when it has labels; write the CSV (``out``,
    default ``words_SPLIT.csv`` beside the npz) and the n-best file (``nbest_out``)."""
    from .decoder import WordDecoder, split_packed

    say = say or (lambda s: print(s, file=sys.stderr))
    logits = Path(logits)
    data = load_logits(logits)
    params = (params or DecoderParams()).replace(nbest=max(1, int(nbest)))
    t0 = time.perf_counter()
    dec = WordDecoder(lm, lexicon, cmudict=cmudict, use_cmudict=use_cmudict, params=params)
    st = dec.stats
    say(f"Decoder: {st['words']} words of the LM {lm} with a pronunciation in {st['lexicon_source']}; "
        f"{st['homophones_dropped']} rare homophones beyond 6 per spelling dropped"
        + (f"; {st['lm_words_without_pronunciation']} LM words have no pronunciation (e.g. "
           f"{', '.join(st['lm_words_without_pronunciation_examples'][:5])})"
           if st.get("lm_words_without_pronunciation") else ""))
    arrays = split_packed(data["logits"], data["offsets"])
    empty = sum(1 for a in arrays if len(a) == 0)
    t1 = time.perf_counter()
    hyps = dec.decode_many(arrays, workers=workers)
    seconds = time.perf_counter() - t1
    texts = [h[0].text if h else "" for h in hyps]
    n = len(texts)
    note = f"; {empty} empty trial(s) (no frames) give an empty sentence" if empty else ""
    say(f"Decoded {n} trials in {seconds:.1f} s ({n / max(seconds, 1e-9):.1f} per second, setup "
        f"{t1 - t0:.1f} s){note}")
    stem = logits.stem[len("logits_"):] if logits.stem.startswith("logits_") else logits.stem
    out = Path(out) if out is not None else logits.parent / f"words_{stem}.csv"
    files = {"csv": str(write_csv(out, data["ids"], texts))}
    if nbest_out is not None:
        files["nbest"] = str(write_nbest(nbest_out, data["ids"], hyps, params.lm_weight))
    summary = {"logits": str(logits), "lm": str(lm), "n_trials": n, "empty": empty,
               "seconds": seconds, "setup_seconds": t1 - t0, "params": params.to_dict(),
               "decoder": dict(st), "texts": texts, "files": files, "wer": None}
    labels = _labels(data)
    if labels is not None:
        rep = wer_report(labels, texts, _days(data))
        summary.update(wer=rep["wer"], errors=rep["errors"], words=rep["words"], by_day=rep["by_day"])
        for line in format_wer(rep):
            say(line)
    else:
        say(f"{logits} has no sentence_label (a test split): no WER")
    say(f"Wrote {', '.join(files.values())}")
    return summary
