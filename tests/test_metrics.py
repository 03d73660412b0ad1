"""fastbci.metrics: batched greedy CTC decoding, edit distance, blank fraction, PER, text."""
from __future__ import annotations

import math
import random

import pytest
import torch

from fastbci.metrics import (PHONEMES, blank_fraction, decode_to_text, edit_distance,
                             greedy_decode, phoneme_error_rate)


def py_levenshtein(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def py_greedy(ids, n, blank=0):
    """Official per-trial decoding: argmax ids over the first n frames, merge repeats, drop blanks."""
    out, last = [], None
    for t in range(n):
        if ids[t] != last and ids[t] != blank:
            out.append(ids[t])
        last = ids[t]
    return out


def pad(seqs, fill):
    L = max([len(s) for s in seqs] + [0])
    return torch.tensor([s + [fill] * (L - len(s)) for s in seqs], dtype=torch.int64).reshape(len(seqs), L)


def F_one_hot(ids, K):
    return torch.nn.functional.one_hot(ids, K).float()


@pytest.mark.parametrize("B,T,K", [(1, 1, 3), (1, 15, 41), (3, 17, 5), (7, 40, 3), (4, 9, 41)])
@pytest.mark.parametrize("blank", [0, 2])
def test_greedy_decode_matches_python(B, T, K, blank):
    g = torch.Generator().manual_seed(B * 1000 + T * 10 + K)
    # few classes and peaked logits so that repeats and blanks are frequent
    ids = torch.randint(0, min(K, 4), (B, T), generator=g)
    logits = torch.randn(B, T, K, generator=g) + 5 * F_one_hot(ids, K)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0] = T
    tokens, n = greedy_decode(logits, lengths, blank=blank)
    am = logits.argmax(-1).tolist()
    expected = [py_greedy(am[b], int(lengths[b]), blank) for b in range(B)]
    assert n.tolist() == [len(e) for e in expected], f"n_tokens {n.tolist()} vs {expected}"
    assert tokens.dtype == torch.int64 and n.dtype == torch.int64
    assert tokens.shape == (B, max(len(e) for e in expected))
    for b in range(B):
        row = tokens[b].tolist()
        assert row[:len(expected[b])] == expected[b], f"trial {b}: {row} vs {expected[b]}"
        assert all(v == -1 for v in row[len(expected[b]):]), f"trial {b}: padding is not -1"


def test_greedy_decode_merge_before_blank_removal():
    # a a _ a b b _ _ b  -> a a b b (repeats merged across frames, blanks separate repeats)
    seq = [1, 1, 0, 1, 2, 2, 0, 0, 2]
    logits = F_one_hot(torch.tensor([seq]), 3)
    tokens, n = greedy_decode(logits, torch.tensor([9]))
    assert tokens.tolist() == [[1, 1, 2, 2]] and n.tolist() == [4]
    tokens, n = greedy_decode(logits, torch.tensor([3]))
    assert tokens.tolist() == [[1]] and n.tolist() == [1]
    tokens, n = greedy_decode(logits, torch.tensor([0]))
    assert tokens.shape == (1, 0) and n.tolist() == [0]
    # bf16 logits decode the same
    tokens, _ = greedy_decode(logits.bfloat16(), torch.tensor([9]))
    assert tokens.tolist() == [[1, 1, 2, 2]]


@pytest.mark.parametrize("B,max_h,max_r,K", [(1, 0, 5, 3), (1, 6, 0, 3), (16, 12, 10, 3),
                                              (33, 7, 25, 41), (8, 30, 30, 2)])
def test_edit_distance_matches_python(B, max_h, max_r, K):
    rnd = random.Random(B * 31 + max_h * 7 + max_r)
    hyps = [[rnd.randrange(K) for _ in range(rnd.randint(0, max_h))] for _ in range(B)]
    refs = [[rnd.randrange(K) for _ in range(rnd.randint(0, max_r))] for _ in range(B)]
    hyps[0] = [rnd.randrange(K) for _ in range(max_h)]
    refs[-1] = [rnd.randrange(K) for _ in range(max_r)]
    h, r = pad(hyps, -1), pad(refs, 0)
    got = edit_distance(h, torch.tensor([len(s) for s in hyps]), r,
                        torch.tensor([len(s) for s in refs]))
    expected = [py_levenshtein(a, b) for a, b in zip(hyps, refs)]
    assert got.dtype == torch.int64
    assert got.tolist() == expected, f"distances {got.tolist()} vs python {expected}"


def test_edit_distance_ignores_padding_and_int32():
    h = torch.tensor([[1, 2, 3, 9, 9]], dtype=torch.int32)
    r = torch.tensor([[1, 3, 7, 7]], dtype=torch.int32)
    assert edit_distance(h, torch.tensor([3]), r, torch.tensor([2])).tolist() == [1]
    assert edit_distance(h, [0], r, [2]).tolist() == [2]


def test_decode_then_distance_pipeline():
    """greedy_decode output feeds edit_distance directly, as in validation."""
    logits = F_one_hot(torch.tensor([[0, 5, 5, 0, 6, 0], [7, 0, 7, 7, 0, 0]]), 41)
    tokens, n = greedy_decode(logits, torch.tensor([6, 4]))
    ref = torch.tensor([[5, 6, 40], [7, 7, 0]])
    d = edit_distance(tokens, n, ref, torch.tensor([3, 2]))
    assert d.tolist() == [1, 0]
    assert phoneme_error_rate(d.sum(), 5) == pytest.approx(0.2)


def test_blank_fraction():
    logits = F_one_hot(torch.tensor([[0, 0, 3, 0], [0, 2, 2, 2]]), 4)
    assert blank_fraction(logits, torch.tensor([4, 2])) == pytest.approx(4 / 6)
    assert blank_fraction(logits, torch.tensor([2, 1])) == pytest.approx(1.0)
    assert blank_fraction(logits, torch.tensor([4, 4]), blank=2) == pytest.approx(3 / 8)
    assert math.isnan(blank_fraction(logits, torch.tensor([0, 0])))


def test_phoneme_error_rate():
    assert phoneme_error_rate(3, 12) == 0.25
    assert phoneme_error_rate(torch.tensor(5), torch.tensor(20)) == 0.25
    with pytest.raises(ValueError, match="total_ref must be > 0"):
        phoneme_error_rate(1, 0)
    with pytest.raises(ValueError, match="total_edits must be >= 0"):
        phoneme_error_rate(-1, 3)


def test_decode_to_text():
    recipe = ("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T "
              "TH UH UW V W Y Z ZH").split()  # docs/recipe.md section 1, ids 1-39
    assert len(PHONEMES) == 41 and list(PHONEMES[1:40]) == recipe and PHONEMES[40] == " | "
    tokens = torch.tensor([[16, 3, 21, 25, 40], [1, 39, -1, -1, -1]])
    text = decode_to_text(tokens, torch.tensor([5, 2]))
    assert text == ["HH AH L OW  | ", "AA ZH"]
    with pytest.raises(ValueError, match=r"row 0 holds ids \[41\]"):
        decode_to_text(torch.tensor([[41]]), torch.tensor([1]))


@pytest.mark.parametrize("call,msg", [
    (lambda: greedy_decode(torch.zeros(2, 5), torch.tensor([1, 1])), r"logits must be a \(B, T, K\)"),
    (lambda: greedy_decode(torch.zeros(2, 5, 3), torch.tensor([1])), r"lengths must have shape \(2,\)"),
    (lambda: greedy_decode(torch.zeros(2, 5, 3), torch.tensor([1, 6])), r"must lie in \[0, 5\]"),
    (lambda: greedy_decode(torch.zeros(1, 5, 3), torch.tensor([1]), blank=3), "blank=3"),
    (lambda: edit_distance(torch.zeros(2, 3, dtype=torch.long), torch.tensor([1, 1]),
                           torch.zeros(3, 3, dtype=torch.long), torch.tensor([1, 1, 1])),
     "hyp has 2 rows but ref has 3"),
    (lambda: edit_distance(torch.zeros(1, 3), torch.tensor([1]),
                           torch.zeros(1, 3, dtype=torch.long), torch.tensor([1])), "integer ids"),
    (lambda: blank_fraction(torch.zeros(1, 4, 3), torch.tensor([-1])), r"must lie in \[0, 4\]"),
])
def test_bad_input_messages(call, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        call()
