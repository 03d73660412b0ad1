"""The n-best family: ``fastbci lm rescore`` checks every row of the n-best file before the LLM
scores anything. A score that is not a finite number, an (id, rank) given twice, an id that is
not a trial of the logits, an id far beyond the others (never used to size anything), bytes that
are not UTF-8, a path that is a directory: exit status 2 and a message naming the file, the line
and the column. A spreadsheet's UTF-8 byte-order mark is accepted."""
from __future__ import annotations

import csv

import pytest
from faultkit import Case, check, command

# the fixture's n-best: a header, then 2 rows (ranks 0, 1) for each of the ids 0..3
HEADER = "id,rank,score,acoustic_score,lm_score,lm_weight,n_words,text"


def _set(rows: list[str], line: int, column: str, value: str) -> list[str]:
    """``rows`` (the file's lines) with ``column`` of line ``line`` (1 = the header) set."""
    cells = next(csv.reader([rows[line - 1]]))
    cells[HEADER.split(",").index(column)] = value
    rows = list(rows)
    rows[line - 1] = ",".join(cells)
    return rows


def _text(lines):
    return ("\n".join(lines) + "\n").encode()


CASES = {
    # name: (the file's bytes from its lines, extra options, words of the message, exit status)
    "nan-score": (lambda r: _text(_set(r, 3, "score", "nan")), [],
                  ["line 3: column score holds 'nan', not a finite number"], 2),
    "infinite-acoustic-score": (lambda r: _text(_set(r, 6, "acoustic_score", "-inf")), [],
                                ["line 6: column acoustic_score holds '-inf', not a finite number"], 2),
    "nan-lm-score-convex": (lambda r: _text(_set(r, 8, "lm_score", "NaN")), ["--llm-formula", "convex"],
                            ["line 8: column lm_score holds 'NaN', not a finite number"], 2),
    "duplicate-id-rank": (lambda r: _text(r + [r[1].replace("drink", "think")]), [],
                          ["line 10: columns id, rank hold 0, 0, already on line 2",
                           "(with the text 'i want to drink some water')"], 2),
    "exact-duplicate-row": (lambda r: _text(r[:3] + [r[2]] + r[3:]), [],
                            ["line 4: columns id, rank hold 0, 1, already on line 3", "the same row twice"], 2),
    "id-not-in-the-logits": (lambda r: _text(r + [r[1].replace("0,0,", "7,0,", 1)]), ["--logits", "LOGITS"],
                             ["line 10: column id holds 7, not a trial of the logits file", "4 trials"], 2),
    "huge-id": (lambda r: _text(r + [r[1].replace("0,0,", "99999999999,0,", 1)]), [],
                ["id 4 has no hypotheses", "have none; line 10: column id holds 99999999999"], 2),
    "not-utf8": (lambda r: _text(r).replace(b"water", b"wat\xe9r", 1), [],
                 ["line 2: column text holds byte 0xe9, which is not UTF-8"], 2),
    "not-a-number": (lambda r: _text(_set(r, 5, "n_words", "four")), [],
                     ["line 5: column n_words holds 'four', not an integer"], 2),
    "missing-column": (lambda r: _text([line.rsplit(",", 1)[0] for line in r]), [],
                       ["lacks the column(s) text"], 2),
    "short-row": (lambda r: _text(r[:4] + [r[4].rsplit(",", 2)[0]] + r[5:]), [],
                  ["line 5: want 8 columns"], 2),
    "empty-file": (lambda r: b"", [], ["(empty file)"], 2),
    "directory": (None, [], ["is a directory, not a file"], 2),
    # a spreadsheet's "CSV UTF-8" starts with a byte-order mark: read as the same file
    "utf8-byte-order-mark": (lambda r: b"\xef\xbb\xbf" + _text(r), [],
                             ["Rescored 8 hypotheses of 4 trials"], 0),
}


@pytest.mark.parametrize("fault", list(CASES))
def test_nbest_fault(fault, words, tiny_llm, tmp_path, capsys):
    make, extra, want, code = CASES[fault]
    nbest = tmp_path / "nbest.csv"
    if make is None:
        nbest.mkdir()
    else:
        nbest.write_bytes(make(words["nbest"].read_text().splitlines()))
    out = tmp_path / "run" / "words.csv"
    argv = ["rescore", "--nbest-file", nbest, "--llm", tiny_llm, "--llm-device", "cpu", "--out", out,
            *[words["logits"] if a == "LOGITS" else a for a in extra]]
    want = [f"{nbest}, {w}" if w.startswith("line") else w for w in want]  # the file, then the line

    def written():
        rows = list(csv.reader(open(out, encoding="utf-8")))
        assert rows[0] == ["id", "text"] and [r[0] for r in rows[1:]] == ["0", "1", "2", "3"], rows

    check(Case(run=lambda: command("lm")(argv), words=[str(nbest), *want] if code else want,
               inputs=[nbest, words["root"], tiny_llm], outputs=[out], code=code,
               expect_outputs=written if code == 0 else None), capsys)
