"""The word-decoding inputs family: a corpus, an n-gram model, a pronunciation file, a decoder
parameter file or an LLM folder that is missing, a directory, a symbolic-link loop or a file of
the wrong kind is refused by ``fastbci lm`` with exit status 2 and a message that names the file
and says what it is, before anything is built or decoded."""
from __future__ import annotations

import os

import pytest
from faultkit import Case, check, command


def _odd(tmp_path, kind: str):
    """A path that is a directory, a link loop or missing."""
    p = tmp_path / f"odd_{kind}"
    if kind == "directory":
        p.mkdir()
    elif kind == "loop":
        os.symlink(p, p)
    return p


WORDS = {"directory": "is a directory, not a file", "loop": "is a symbolic link loop", "missing": "does not exist"}


def _build(w, odd):
    return ["build", "--corpus", odd, "--out", "OUT/lm.arpa"], "the corpus file"


def _decode_lm(w, odd):
    return ["decode", "--logits", w["logits"], "--lm", odd, "--out", "OUT/words.csv"], "the LM file"


def _decode_lexicon(w, odd):
    return (["decode", "--logits", w["logits"], "--lm", w["lm"], "--lexicon", odd, "--out", "OUT/words.csv"],
            "the pronunciation file")


def _decode_params(w, odd):
    return (["decode", "--logits", w["logits"], "--lm", w["lm"], "--params", odd, "--out", "OUT/words.csv"],
            "decoder parameter file")


CASES = {f"{name}-{kind}": (make, kind, WORDS[kind])
         for name, make in (("corpus", _build), ("lm", _decode_lm), ("lexicon", _decode_lexicon),
                            ("decoder-params", _decode_params))
         for kind in ("directory", "loop", "missing")}
CASES["decoder-params-missing"] = (_decode_params, "missing", "not found")  # as every YAML file
CASES["llm-folder-is-a-file"] = (None, None, None)


@pytest.mark.parametrize("fault", list(CASES))
def test_lm_input_fault(fault, words, tmp_path, capsys):
    make, kind, said = CASES[fault]
    out = tmp_path / "run"
    if make is None:  # the LLM "folder" is the n-best file itself
        argv = ["rescore", "--nbest-file", words["nbest"], "--llm", words["nbest"], "--out", out / "words.csv"]
        want, inputs = [f"--llm {words['nbest']}: want a model folder"], [words["root"]]
    else:
        odd = _odd(tmp_path, kind)
        argv, what = make(words, odd)
        want, inputs = [f"{what} {odd} {said}"], [words["root"], odd]
    argv = [str(a).replace("OUT", str(out)) for a in argv]
    check(Case(run=lambda: command("lm")(argv), words=want, inputs=inputs, outputs=[out]), capsys)
