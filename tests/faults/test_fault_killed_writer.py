"""The killed-writer family: every kind of file fastbci writes is written to a temporary file
beside it and renamed when complete, so a writer killed midway leaves the previous file (or
none), never a part of the new one. Each case kills the writer of one output at its first write
(half of the bytes on disk, then a BaseException, as a kill) and looks at the output at that
moment and afterwards."""
from __future__ import annotations

import numpy as np
import pytest
from faultkit import Killed, command, killed_while_writing, temporaries

from fastbci.lm import Hypothesis

OLD = b"the previous file, complete\n"


def _hyps():
    return [[Hypothesis("where is the doctor", -9.5, -8.0, -1.0, 4)], []]


def _words_csv(t, ctx):
    from fastbci.lm.run import write_csv
    return t / "words.csv", OLD, lambda p: write_csv(p, [0, 1], ["where is the doctor", ""])


def _nbest_csv(t, ctx):
    from fastbci.lm.run import write_nbest
    return t / "nbest.csv", OLD, lambda p: write_nbest(p, [0, 1], _hyps(), 1.5)


def _rescored_csv(t, ctx):
    from fastbci.lm import RescoreParams
    from fastbci.lm.rescore import NBest, write_rescored
    nb = [NBest.from_hypotheses(h) for h in _hyps()]
    return t / "rescored.csv", OLD, lambda p: write_rescored(p, [0, 1], nb, [np.array([-3.0]), np.zeros(0)],
                                                             RescoreParams())


def _arpa(t, ctx):
    from fastbci.lm import build_arpa
    return t / "lm.arpa", None, lambda p: build_arpa(out=p, order=2, lines=["a b c", "b c d"])


def _lexicon(t, ctx):
    from fastbci.lm import Lexicon
    lex = Lexicon({"water": [[30, 1, 29, 10]]})
    return t / "lexicon.txt", OLD, lex.write


def _decoder_params(t, ctx):
    w = ctx["words"]
    out = t / "decoder_params.yaml"
    argv = ["tune", "--logits", w["logits"], "--lm", w["lm"], "--workers", "1", "--lm-weights", "1",
            "--word-scores", "0", "--rounds", "0", "--out", out]
    return out, None, lambda p: command("lm")(argv)


def _session_hdf5(t, ctx):
    from fastbci.data import read_session_file, write_session_file
    trials = read_session_file(ctx["release"] / "t15.2023.08.13" / "data_val.hdf5", "val")
    return t / "data_val.hdf5", OLD, lambda p: write_session_file(p, trials, "val")


def _synth(name):
    def case(t, ctx):
        out = t / "release"
        return out / name, None, lambda p: command("synth")(["--out", out, "--small"])
    return case


def _corpus(t, ctx):
    from fastbci.synth import write_corpus
    return t / "corpus_train.txt", OLD, lambda p: write_corpus(p, ["Where is the doctor?"])


def _curves(t, ctx):
    pytest.importorskip("matplotlib")
    from fastbci.training.report import plot_curves
    recs = [{"batch": k, "split": "train", "loss": 2.0 - k / 10, "lr": 0.01} for k in range(5)]
    return t / "training_curves.png", OLD, lambda p: plot_curves(recs, p, np.linspace(2, 1, 5))


def _args_yaml(t, ctx):
    from fastbci.config import dump, load_config
    return t / "args.yaml", OLD, lambda p: dump(load_config(None), p)


CASES = {"words-csv": _words_csv, "nbest-csv": _nbest_csv, "rescored-csv": _rescored_csv,
         "arpa": _arpa, "lexicon": _lexicon, "decoder-params-yaml": _decoder_params,
         "session-hdf5": _session_hdf5, "synth-session-hdf5": _synth("t15.2023.08.18/data_val.hdf5"),
         "synth-corpus": _synth("corpus_train.txt"), "synth-config-yaml": _synth("synth_config.yaml"),
         "synth-params-json": _synth("synth_params.json"), "corpus": _corpus,
         "training-curves-png": _curves, "args-yaml": _args_yaml}


@pytest.mark.parametrize("kind", list(CASES))
def test_killed_writer(kind, release, words, tmp_path, monkeypatch):
    target, old, write = CASES[kind](tmp_path, {"release": release, "words": words})
    if old is not None:
        target.write_bytes(old)
    with killed_while_writing(monkeypatch, target) as died:
        with pytest.raises(Killed):
            write(target)
    assert died, f"the writer of {target.name} never opened it through Python's open"
    opened, held = died[0]
    assert held == old, (f"while {opened} was being written, {target} held "
                         f"{'nothing' if held is None else held[:60]!r}, not {old!r}: a partial file")
    assert (target.read_bytes() if target.exists() else None) == old, f"{target} was left changed"
    assert not temporaries(target.parent), temporaries(target.parent)
