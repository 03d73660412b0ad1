"""fastbci.lm.ngram: interpolated modified Kneser-Ney, ARPA output, normalisation, KenLM agreement."""
import math

import numpy as np
import pytest

from fastbci.lm.arpa import ArpaError, ArpaModel, arpa_vocabulary
from fastbci.lm.ngram import build_arpa, count_ngrams, read_corpus

WORDS = "the a cat dog sat on mat ran to big small red is it".split()


def _corpus(n=400, seed=0):
    rng = np.random.default_rng(seed)
    p = 1 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 8)), p=p)) for _ in range(n)]


@pytest.fixture(scope="module", params=[(3, False), (4, True)], ids=["3gram", "4gram-pruned"])
def model(request, tmp_path_factory):
    order, prune = request.param
    path = tmp_path_factory.mktemp("ngram") / "lm.arpa"
    lines = _corpus() + ["The cat, the DOG!", "", "  "]
    summary = build_arpa(out=path, order=order, prune=prune, lines=lines)
    return path, ArpaModel(path), summary


HISTORIES = [["<s>"], ["the"], ["<s>", "the"], ["the", "cat"], ["cat", "sat", "on"], ["red", "red", "red"],
             ["never", "seen"], ["<s>", "a", "big"], ["is", "it", "the"]]


def test_distributions_sum_to_one(model):
    _, m, _ = model
    vocab = [w for w in m.vocab if w != "<s>"]
    assert set(vocab) == set(WORDS) | {"</s>", "<unk>"}
    assert sum(10 ** m.logprob(w) for w in vocab) == pytest.approx(1.0, abs=1e-4)
    for h in HISTORIES:
        assert sum(10 ** m.logprob(w, h) for w in vocab) == pytest.approx(1.0, abs=1e-4), h


def test_summary_and_pruning(model):
    _, m, s = model
    assert s["n_sentences"] == 401 and s["vocab"] == len(WORDS)   # two blank lines skipped
    assert s["ngrams"][0] == len(WORDS) + 3                         # + <unk> <s> </s>
    if s["prune"]:
        assert s["pruned"][2] > 0 and s["pruned"][:2] == [0, 0]
        # every kept n-gram's prefix and suffix is kept too
        for key in m.prob:
            if len(key) > 1:
                assert key[:-1] in m.prob and key[1:] in m.prob, key
    for d1, d2, d3 in s["discounts"][1:]:
        assert 0 < d1 <= 1 and 0 < d2 <= 2 and 0 < d3 <= 3


def test_kneser_ney_by_hand(tmp_path):
    """Bigram continuation counts on a tiny corpus, checked against the formula by hand."""
    vocab, tokens, n = read_corpus(lines=["a b", "b b", "a b a"])
    c = count_ngrams(vocab, tokens, n, 2)
    ids = {w: i for i, w in enumerate(vocab)}
    adj = dict(zip(vocab, c.adjusted[0].tolist()))
    # distinct left neighbours: a <- {<s>, b}; b <- {a, <s>, b}; </s> <- {b, a}
    assert (adj["a"], adj["b"], adj["</s>"], adj["<unk>"], adj["<s>"]) == (2, 3, 2, 0, 0)
    assert c.orders[0].raw[ids["b"]] == 4
    # bigram counts are raw at the highest order: (a b) twice
    o = c.orders[1]
    key = {(vocab[p], vocab[w]): k for p, w, k in zip(o.prefix.tolist(), o.last.tolist(), o.raw.tolist())}
    assert key[("a", "b")] == 2 and key[("<s>", "a")] == 2 and key[("b", "</s>")] == 2
    # order 2: t1=4, t2=3, t3=t4=0 -> Y=0.4, D1=1-2*0.4*3/4=0.4, D2=2-0=2; unigrams: t1=0 -> the
    # fallbacks D1=0.5, D2=1, D3+=1.5; gamma() = (1 + 1.5 + 1) / 7 over |V| = 4 (a b </s> <unk>)
    build_arpa(out=tmp_path / "h.arpa", order=2, lines=["a b", "b b", "a b a"])
    m = ArpaModel(tmp_path / "h.arpa")
    p_b = (3 - 1.5) / 7 + 0.5 / 4
    assert 10 ** m.logprob("<unk>") == pytest.approx(0.5 / 4, rel=1e-6)
    assert 10 ** m.logprob("b") == pytest.approx(p_b, rel=1e-6)
    # p(b | a) = (2 - D2) / 3 + gamma(a) p(b), gamma(a) = (D2 + D1) / 3
    assert 10 ** m.logprob("b", ["a"]) == pytest.approx((2 - 2) / 3 + (2 + 0.4) / 3 * p_b, rel=1e-6)
    # p(a | <s>) = (2 - D2) / 3 + gamma(<s>) p(a), gamma(<s>) = (D2 + D1) / 3; p(a) = (2 - 1) / 7 + 1/8
    assert 10 ** m.logprob("a", ["<s>"]) == pytest.approx(2.4 / 3 * (1 / 7 + 0.125), rel=1e-6)


def test_kenlm_through_flashlight_scores_as_the_builder(model):
    pytest.importorskip("flashlight.lib.text", reason="flashlight-text (pip install 'fastbci[lm]')")
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary
    path, m, _ = model
    words = [w for w in m.vocab if w not in ("<s>", "</s>")]
    d = Dictionary(words)
    lm = KenLM(str(path), d)
    for sent in _corpus(30, seed=5) + ["zebra the cat", "red red red red red red", "the"]:
        state, ken = lm.start(False), []
        for w in sent.split():
            state, s = lm.score(state, d.get_index(w if d.contains(w) else "<unk>"))
            ken.append(s)
        ken.append(lm.finish(state)[1])
        np.testing.assert_allclose(ken, m.score_sentence(sent), atol=2e-5, err_msg=sent)
    # null context: unigram probabilities
    for w in ("the", "cat", "<unk>"):
        assert lm.score(lm.start(True), d.get_index(w))[1] == pytest.approx(m.logprob(w), abs=1e-5)


def test_bad_corpus_and_arpa_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        build_arpa(tmp_path / "missing.txt", tmp_path / "x.arpa")
    (tmp_path / "empty.txt").write_text("\n 123 !!\n")
    with pytest.raises(ValueError, match="no sentence"):
        build_arpa(tmp_path / "empty.txt", tmp_path / "x.arpa")
    with pytest.raises(ValueError, match="order must be >= 1"):
        build_arpa(out=tmp_path / "x.arpa", order=0, lines=["a b"])
    bad = tmp_path / "bad.arpa"
    bad.write_text("hello\n")
    with pytest.raises(ArpaError, match="bad.arpa:1: not an ARPA file"):
        arpa_vocabulary(bad)
    good = tmp_path / "good.arpa"
    build_arpa(out=good, order=2, lines=["a b", "b a"])
    text = good.read_text()
    (tmp_path / "cut.arpa").write_text(text[: text.index("\\2-grams:")])
    with pytest.raises(ArpaError, match="cut.arpa: the file ends without"):
        ArpaModel(tmp_path / "cut.arpa")
    (tmp_path / "count.arpa").write_text(text.replace("ngram 1=", "ngram 1=9"))
    with pytest.raises(ArpaError, match="the header says"):
        ArpaModel(tmp_path / "count.arpa")
    assert math.isfinite(ArpaModel(good).logprob("zebra"))
