"""fastbci.lm.text: the official sentence normalisation and the word error rate."""
import pytest

from fastbci.lm.text import normalize, wer_report, word_edit_distance


@pytest.mark.parametrize("raw, want", [
    ("Hello, World!", "hello world"),
    ("I don't know.", "i don't know"),
    ("  Two   spaces\tand a tab ", "two spacesand a tab"),  # a tab is deleted, not a space
    ("A well-known fact.", "a well-known fact"),
    ("fact -- really", "fact - really"),       # "- " -> " " first, so one dash stays a word
    ("end- of line", "end of line"),
    ("say 'yes' now", "say'yes' now"),         # " '" -> "'"
    ("Numbers 42 and 7am", "numbers and am"),
    ("", ""),
])
def test_normalize_matches_the_official_rules(raw, want):
    assert normalize(raw) == want


def test_word_edit_distance_by_hand():
    assert word_edit_distance("the cat sat on the mat".split(), "the cat sit on mat".split()) == 2
    assert word_edit_distance([], "a b".split()) == 2
    assert word_edit_distance("a b c".split(), []) == 3
    assert word_edit_distance("a b c".split(), "c b a".split()) == 2
    assert word_edit_distance(list("kitten"), list("sitting")) == 3


def test_wer_report_overall_and_per_day():
    refs = ["The cat sat on the mat.", "Hello, world!", "Good morning"]
    hyps = ["the cat sit on mat", "hello world", "good morning to you"]
    rep = wer_report(refs, hyps, days=["d1", "d2", "d2"])
    # 1 substitution + 1 deletion; 0; 2 insertions: 4 errors over 6 + 2 + 2 words
    assert (rep["errors"], rep["words"], rep["n_sentences"]) == (4, 10, 3)
    assert rep["wer"] == pytest.approx(0.4)
    assert rep["by_day"]["d1"] == {"wer": pytest.approx(2 / 6), "errors": 2, "words": 6, "n_sentences": 1}
    assert rep["by_day"]["d2"]["errors"] == 2 and rep["by_day"]["d2"]["words"] == 4
    assert wer_report([""], ["x"])["wer"] is None
    with pytest.raises(ValueError, match="2 reference sentences but 1"):
        wer_report(["a", "b"], ["a"])
