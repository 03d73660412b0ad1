"""The logits family: ``fastbci lm decode`` checks the evaluation's npz before it decodes. Logits
that are NaN, infinite, text or Python objects, ids that are not integers or given twice, offsets
that do not rise, a single .npy array, a directory: exit status 2 and a message naming the file
and, for a logit, the trial index (with its id, frame and class)."""
from __future__ import annotations

import numpy as np
import pytest
from faultkit import Case, check, command

# the fixture's logits: 4 trials of 30, 25, 0 and 40 frames (offsets 0, 30, 55, 55, 95)


def _with(**changes):
    """The fixture's arrays with some replaced (None: removed), saved as an npz."""
    def make(path, arrays):
        arrays = {**arrays, **changes}
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return make


def _logit(frame: int, cls: int, value):
    def make(path, arrays):
        lg = arrays["logits"].astype(object if isinstance(value, str) else np.float32)
        if isinstance(value, str):
            lg = lg.astype(str)
        lg[frame, cls] = value
        _with(logits=lg)(path, arrays)
    return make


def _objects(path, arrays):
    np.savez(path, **{**arrays, "logits": arrays["logits"].astype(object)})


def _npy(path, arrays):
    with open(path, "wb") as f:
        np.save(f, arrays["logits"])


def _directory(path, arrays):
    path.mkdir()


CASES = {
    "nan-logit": (_logit(60, 7, np.nan), ["trial index 3 (id 3), frame 5, class 7", "the logit is nan"]),
    "infinite-logit": (_logit(31, 0, -np.inf), ["trial index 1 (id 1), frame 1, class 0", "the logit is -inf"]),
    "text-logit": (_logit(40, 2, "x"), ["trial index 1 (id 1), frame 10, class 2", "'x' is not a number"]),
    "logits-stored-as-text": (lambda p, a: _with(logits=a["logits"].astype(str))(p, a),
                              ["trial index 0 (id 0)", "stored as <U", "not as numbers"]),
    "logits-of-python-objects": (_objects, ["the array 'logits' holds Python objects, not numbers"]),
    "ids-not-integers": (_with(ids=np.array(["a", "b", "c", "d"])), ["the ids are <U1 values, not integers"]),
    "duplicate-ids": (_with(ids=np.array([0, 1, 1, 3])), ["id 1 is given to trial indices 1 and 2"]),
    "ids-of-another-length": (_with(ids=np.arange(3)), ["'ids' has 3 entries for 4 trials"]),
    "offsets-not-rising": (_with(offsets=np.array([0, 30, 20, 55, 95])), ["the offsets do not rise"]),
    "offsets-not-whole-numbers": (_with(offsets=np.array([0, 30.5, 55, 55, 95])),
                                  ["the offsets are not whole numbers (float64: 0.0, 30.5"]),
    "wrong-class-count": (lambda p, a: _with(logits=a["logits"][:, :40])(p, a), ["the logits have shape (95, 40)"]),
    "no-offsets": (_with(offsets=None), ["has no 'offsets' array"]),
    "a-single-npy-array": (_npy, ["is a single .npy array, not the .npz archive"]),
    "not-an-npz": (lambda p, a: p.write_text("id,text\n0,hello\n"), ["is not a readable .npz file"]),
    "directory": (_directory, ["the logits file", "is a directory, not a file"]),
}


@pytest.mark.parametrize("fault", list(CASES))
def test_logits_fault(fault, words, tmp_path, capsys):
    make, want = CASES[fault]
    logits = tmp_path / "logits_val.npz"
    with np.load(words["logits"]) as z:
        make(logits, {k: z[k] for k in z.files})
    out = tmp_path / "run" / "words.csv"
    argv = ["decode", "--logits", logits, "--lm", words["lm"], "--out", out, "--workers", "1",
            "--nbest-file", tmp_path / "run" / "nbest.csv"]
    check(Case(run=lambda: command("lm")(argv), words=[str(logits), *want], inputs=[logits, words["root"]],
               outputs=[tmp_path / "run"]), capsys)
