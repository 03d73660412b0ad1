"""From an evaluation's logits file to sentences, WER and the submission CSV (and from an n-best
file to the sentences an LLM prefers: :func:`rescore_file`).

:func:`decode_file` is what ``fastbci lm decode`` and ``fastbci evaluate
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

from fastbci import outputs
from fastbci.data.phonemes import N_CLASSES
from fastbci.fileio import atomic_path, check_file, path_problem

from .params import DEFAULT_LLM_NBEST, DecoderParams, RescoreParams
from .text import wer_report

__all__ = ["check_ready", "load_logits", "decode_file", "format_wer", "rescore_file", "write_csv",
           "write_nbest"]


def _arrays(path: Path) -> dict:
    """Every array of an npz (an array of Python objects, which would need unpickling, is named)."""
    problem = path_problem(path)
    if problem is not None:
        if not os.path.lexists(path):
            raise FileNotFoundError(f"the logits file {path} does not exist")
        raise ValueError(f"the logits file {path} {problem}")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npz file ({e})") from None
    if not hasattr(z, "files"):
        raise ValueError(f"{path} is a single .npy array, not the .npz archive that python -m "
                         "fastbci.evaluate writes")
    data = {}
    with z:
        for k in z.files:
            try:
                data[k] = z[k]
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise ValueError(f"{path}: the array '{k}' holds Python objects, not numbers (it "
                                     "would need unpickling, which fastbci never does)") from None
                raise ValueError(f"{path}: the array '{k}' cannot be read ({e})") from None
            except (OSError, EOFError) as e:
                raise ValueError(f"{path}: the array '{k}' cannot be read ({e})") from None
    return data


def _trial_of(off: np.ndarray, frame: int) -> int:
    """The trial whose frames hold ``frame`` (empty trials hold none)."""
    return int(np.searchsorted(off, frame, side="right")) - 1


def _check_values(path: Path, lg: np.ndarray, off: np.ndarray, ids: np.ndarray) -> None:
    """Logits that are numbers and finite: the first bad one is named by trial index, its id,
    its frame and its class."""
    def where(frame: int, c: int) -> str:
        t = _trial_of(off, frame)
        return f"trial index {t} (id {ids[t]}), frame {frame - off[t]}, class {c}"

    if lg.dtype.kind not in "fiu":
        try:
            lg.astype(np.float64)
        except (TypeError, ValueError):
            pass
        else:  # text that reads as numbers is still not what evaluate writes
            raise ValueError(f"{path}: {where(0, 0)}: the logits are stored as {lg.dtype} values "
                             f"({str(lg[0, 0])!r}), not as numbers" if len(lg) else
                             f"{path}: the logits are stored as {lg.dtype} values, not as numbers")
        for frame in range(len(lg)):
            for c in range(lg.shape[1]):
                try:
                    float(lg[frame, c])
                except (TypeError, ValueError):
                    raise ValueError(f"{path}: {where(frame, c)}: the logit {str(lg[frame, c])!r} is not a "
                                     f"number (the logits array is {lg.dtype}, want floats)") from None
    finite = np.isfinite(lg)
    if not finite.all():
        frame, c = (int(v) for v in np.argwhere(~finite)[0])
        n_bad = len({_trial_of(off, int(f)) for f in np.nonzero(~finite.all(axis=1))[0]})
        raise ValueError(f"{path}: {where(frame, c)}: the logit is {lg[frame, c]} ({n_bad} of the "
                         f"{len(off) - 1} trials hold NaN or infinite logits: did the model that wrote "
                         "them diverge?)")


def _check_index_arrays(path: Path, data: dict, n: int) -> None:
    for key in ("ids", "session", "day", "sentence_label"):
        if key in data and data[key].ndim != 1:
            raise ValueError(f"{path}: '{key}' has shape {data[key].shape}; want one entry per trial")
        if key in data and len(data[key]) != n:
            raise ValueError(f"{path}: '{key}' has {len(data[key])} entries for {n} trials")
    ids = data["ids"]
    if ids.dtype.kind not in "iu":
        first = f" (trial index 0 holds {str(ids[0])!r})" if n else ""
        raise ValueError(f"{path}: the ids are {ids.dtype} values, not integers{first}")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        at = np.nonzero(ids == dup)[0]
        raise ValueError(f"{path}: id {dup} is given to trial indices {at[0]} and {at[1]}; each trial "
                         "needs its own id")


def load_logits(path: str | os.PathLike) -> dict:
    """The arrays of an evaluation npz, checked: ``logits`` (frames, 41) of finite numbers,
    ``offsets`` rising from 0 to the frame count, integer ``ids`` (one per trial, each once),
    and when present ``session``, ``day``, ``sentence_label``. A problem is a ValueError naming
    the file and, for a logit, the trial index."""
    path = Path(path)
    data = _arrays(path)
    for key in ("logits", "offsets"):
        if key not in data:
            raise ValueError(f"{path} has no '{key}' array (want the logits_SPLIT.npz that "
                             "fastbci evaluate writes)")
    lg, off = data["logits"], data["offsets"]
    if lg.ndim != 2 or lg.shape[1] != N_CLASSES:
        raise ValueError(f"{path}: the logits have shape {lg.shape}; want (frames, {N_CLASSES}) "
                         "(blank, 39 phonemes, silence)")
    whole = off.dtype.kind in "iu" or (off.dtype.kind == "f" and bool(np.all(np.isfinite(off)))
                                       and bool(np.all(off == np.round(off))))
    if not whole:
        raise ValueError(f"{path}: the offsets are not whole numbers ({off.dtype}: "
                         f"{', '.join(str(v) for v in off[:6].tolist())}...)")
    off = off.astype(np.int64)
    if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != len(lg) or (np.diff(off) < 0).any():
        raise ValueError(f"{path}: the offsets do not rise from 0 to the {len(lg)} logit frames")
    n = len(off) - 1
    data["offsets"] = off
    data.setdefault("ids", np.arange(n))
    _check_index_arrays(path, data, n)
    _check_values(path, lg, off, data["ids"])
    return data


def write_csv(path: str | os.PathLike, ids: Sequence, texts: Sequence[str]) -> Path:
    """``id,text`` rows with a header (the official evaluation's and the submission format)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i, t in zip(ids, texts):
            w.writerow([int(i), t])
    return path


def write_nbest(path: str | os.PathLike, ids: Sequence, nbest: Sequence, lm_weight: float) -> Path:
    """``id,rank,score,acoustic_score,lm_score,lm_weight,n_words,text`` rows: the top
    hypotheses of each trial with their summed acoustic log-probability (natural log) and LM
    log10-probability, for rescoring with another model (``fastbci lm rescore``). A
    trial without frames gets one row, the empty sentence with zero scores, so that every id of
    the split has a row."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "rank", "score", "acoustic_score", "lm_score", "lm_weight", "n_words", "text"])
        for i, hyps in zip(ids, nbest):
            if not hyps:  # a trial without frames: its sentence is the empty one
                w.writerow([int(i), 0, f"{0.0:.6f}", f"{0.0:.6f}", f"{0.0:.6f}", lm_weight, 0, ""])
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
    check_file(lm, "the LM file")
    _flashlight()


def _say_decoder(say, lm, st: dict) -> None:
    say(f"Decoder: {st['words']} words of the LM {lm} with a pronunciation in {st['lexicon_source']}; "
        f"{st['homophones_dropped']} rare homophones beyond 6 per spelling dropped"
        + (f"; {st['lm_words_without_pronunciation']} LM words have no pronunciation (e.g. "
           f"{', '.join(st['lm_words_without_pronunciation_examples'][:5])})"
           if st.get("lm_words_without_pronunciation") else ""))


def _rescore(hyps: list, scorer, rescore: RescoreParams, say) -> tuple[list[str], list, list]:
    """The LLM's choice of sentence per trial, the n-best lists and their LLM scores."""
    from .rescore import NBest, best_indices, score_nbest
    nbests = [NBest.from_hypotheses(h) for h in hyps]
    lp = score_nbest(scorer, nbests, rescore.llm_text)
    pick = best_indices(nbests, lp, rescore)
    st = scorer.stats
    say(f"LLM {scorer.source}: {sum(len(n) for n in nbests)} hypotheses rescored in {st['seconds']:.1f} s "
        f"({st['texts'] / max(st['seconds'], 1e-9):.0f} hypotheses/s, {rescore.formula}, "
        f"llm_alpha {rescore.llm_alpha:g})")
    return [nb.texts[k] if k >= 0 else "" for nb, k in zip(nbests, pick)], nbests, lp


@outputs.writes("lm")
def decode_file(logits: str | os.PathLike, lm: str | os.PathLike, *, out: str | os.PathLike | None = None,
                params: DecoderParams | None = None, lexicon=None, cmudict=None, use_cmudict: bool = True,
                workers: int | None = None, nbest: int | None = None,
                nbest_out: str | os.PathLike | None = None, llm=None, rescore: RescoreParams | None = None,
                llm_options: dict | None = None, rescored_out: str | os.PathLike | None = None,
                say: Callable[[str], None] | None = None, overwrite: bool = False,
                inputs: Sequence = ()) -> dict:
    """Decode an evaluation npz to sentences; WER when it has labels; write the CSV (``out``,
    default ``words_SPLIT.csv`` beside the npz) and the n-best file (``nbest_out``). With
    ``llm`` (an :class:`~fastbci.lm.LLMScorer`, or a model folder / hub id loaded with
    ``llm_options``), the ``nbest`` hypotheses of each trial are rescored by ``rescore``'s
    formula and the best becomes the sentence (``rescored_out``: the rescored lists). ``nbest``
    defaults to 1, and to 100 with ``llm``. The outputs follow fastbci's output rule
    (:mod:`fastbci.outputs`; ``overwrite``: replace files an earlier decode wrote; ``inputs``:
    more ``(what, path)`` the outputs must not meet), checked before anything is decoded."""
    from .decoder import WordDecoder, split_packed
    from .rescore import scorer_of, write_rescored

    say = say or (lambda s: print(s, file=sys.stderr))
    logits = Path(logits)
    data = load_logits(logits)  # the inputs are checked first, then the outputs
    check_ready(lm)
    stem = logits.stem[len("logits_"):] if logits.stem.startswith("logits_") else logits.stem
    out = Path(out) if out is not None else logits.parent / f"words_{stem}.csv"
    outputs.check_files(
        [("--out", out), ("--nbest-file", nbest_out), ("--rescored-out", rescored_out)],
        inputs=[("logits file", logits), ("LM", lm), ("lexicon", lexicon), ("CMU dictionary", cmudict),
                *inputs], overwrite=overwrite)
    if nbest is None:
        nbest = DEFAULT_LLM_NBEST if llm is not None else 1
    params = (params or DecoderParams()).replace(nbest=max(1, int(nbest)))
    rescore = rescore or RescoreParams()
    scorer = scorer_of(llm, llm_options) if llm is not None else None  # before the long decode
    t0 = time.perf_counter()
    dec = WordDecoder(lm, lexicon, cmudict=cmudict, use_cmudict=use_cmudict, params=params)
    _say_decoder(say, lm, dec.stats)
    arrays = split_packed(data["logits"], data["offsets"])
    empty = sum(1 for a in arrays if len(a) == 0)
    t1 = time.perf_counter()
    hyps = dec.decode_many(arrays, workers=workers)
    seconds = time.perf_counter() - t1
    top1 = [h[0].text if h else "" for h in hyps]
    n = len(top1)
    note = f"; {empty} empty trial(s) (no frames) give an empty sentence" if empty else ""
    say(f"Decoded {n} trials in {seconds:.1f} s ({n / max(seconds, 1e-9):.1f} per second, setup "
        f"{t1 - t0:.1f} s){note}")
    texts, nbests, lp = _rescore(hyps, scorer, rescore, say) if scorer is not None else (top1, None, None)
    files = {"csv": str(write_csv(out, data["ids"], texts))}
    if nbest_out is not None:
        files["nbest"] = str(write_nbest(nbest_out, data["ids"], hyps, params.lm_weight))
    if rescored_out is not None and nbests is not None:
        files["rescored"] = str(write_rescored(rescored_out, data["ids"], nbests, lp, rescore))
    summary = {"logits": str(logits), "lm": str(lm), "n_trials": n, "empty": empty,
               "seconds": seconds, "setup_seconds": t1 - t0, "params": params.to_dict(),
               "decoder": dict(dec.stats), "texts": texts, "files": files, "wer": None}
    if scorer is not None:
        summary.update(llm=scorer.source, rescore=rescore.to_dict(), llm_stats=dict(scorer.stats))
    _score_words(summary, data, logits, top1 if scorer is not None else None, say)
    say(f"Wrote {', '.join(files.values())}")
    return summary


def _score_words(summary: dict, data: dict, logits: Path, top1: list[str] | None, say) -> None:
    """The WER of ``summary["texts"]`` (and of the decoder's top-1 ``top1`` before rescoring)
    into ``summary`` when the file has labels."""
    labels = _labels(data)
    if labels is None:
        say(f"{logits} has no sentence_label (a test split): no WER")
        return
    rep = wer_report(labels, summary["texts"], _days(data))
    summary.update(wer=rep["wer"], errors=rep["errors"], words=rep["words"], by_day=rep["by_day"])
    if top1 is not None:
        summary["wer_decoder"] = wer_report(labels, top1)["wer"]
        if summary["wer_decoder"] is not None:
            say(f"WER of the decoder's top-1, before LLM rescoring: {100 * summary['wer_decoder']:.2f}%")
    for line in format_wer(rep):
        say(line)


@outputs.writes("lm")
def rescore_file(nbest: str | os.PathLike, llm, *, params: RescoreParams | None = None,
                 out: str | os.PathLike | None = None, rescored_out: str | os.PathLike | None = None,
                 logits: str | os.PathLike | None = None, llm_options: dict | None = None,
                 say: Callable[[str], None] | None = None, overwrite: bool = False,
                 inputs: Sequence = ()) -> dict:
    """Rescore an n-best file with ``llm`` (an :class:`~fastbci.lm.LLMScorer` or a model folder /
    hub id); write ``id,text`` (``out``, default ``words_rescored.csv`` beside the n-best) and,
    on request, the rescored lists. ``logits``: the npz the n-best came from, for its ids and,
    on val, the WER (before and after rescoring)."""
    from .rescore import best_indices, read_nbest, score_nbest, scorer_of, write_rescored

    say = say or (lambda s: print(s, file=sys.stderr))
    params = params or RescoreParams()
    data = load_logits(logits) if logits is not None else None  # the inputs first, then the outputs
    ids, nbests = read_nbest(nbest, None if data is None else [int(i) for i in data["ids"]])
    out = Path(out) if out is not None else Path(nbest).parent / "words_rescored.csv"
    outputs.check_files([("--out", out), ("--rescored-out", rescored_out)],
                        inputs=[("n-best file", nbest), ("logits file", logits), *inputs],
                        overwrite=overwrite)
    scorer = scorer_of(llm, llm_options)
    lp = score_nbest(scorer, nbests, params.llm_text)
    pick = best_indices(nbests, lp, params)
    texts = [nb.texts[k] if k >= 0 else "" for nb, k in zip(nbests, pick)]
    files = {"csv": str(write_csv(out, ids, texts))}
    if rescored_out is not None:
        files["rescored"] = str(write_rescored(rescored_out, ids, nbests, lp, params))
    summary = {"nbest": str(nbest), "llm": scorer.source, "n_trials": len(ids),
               "n_hypotheses": int(sum(len(nb) for nb in nbests)), "params": params.to_dict(),
               "llm_stats": dict(scorer.stats), "texts": texts, "files": files, "wer": None}
    if data is not None:
        _score_words(summary, data, Path(logits), [nb.texts[0] if len(nb) else "" for nb in nbests], say)
    say(f"Rescored {summary['n_hypotheses']} hypotheses of {len(ids)} trials with {scorer.source} "
        f"in {scorer.stats['seconds']:.1f} s; wrote {', '.join(files.values())}")
    return summary
