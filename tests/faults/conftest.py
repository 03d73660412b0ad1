"""Fixtures of the fault-injection suite: a small synthetic release, a tiny trained checkpoint,
the word decoder's files (corpus, ARPA model, logits, n-best) and a tiny causal LM. Each is made
once per session and never modified: a case that damages a file damages its own copy."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from faultkit import train_argv



@pytest.fixture(scope="session")
def release(small_release) -> Path:
    """``fastbci synth --small`` (3 sessions, 32 features; tests/conftest.py's, seed 2):
    read-only for the cases."""
    return small_release


@pytest.fixture()
def data_copy(release, tmp_path) -> Path:
    """A copy of the release that a case may damage, with its config pointing at it."""
    d = tmp_path / "data"
    shutil.copytree(release, d)
    cfg = (d / "synth_config.yaml").read_text().replace(str(release.resolve()), str(d.resolve()))
    (d / "synth_config.yaml").write_text(cfg)
    return d


@pytest.fixture(scope="session")
def trained(release, tmp_path_factory) -> Path:
    """The folder of a finished tiny run (checkpoint/best_checkpoint, args.yaml...)."""
    from fastbci.config import load_config
    from fastbci.training import Trainer
    out = tmp_path_factory.mktemp("faults_run")
    argv = train_argv(release / "synth_config.yaml", out)
    res = Trainer(load_config(argv[0], argv[1:]), console=False).fit()
    assert res.status == "finished", res
    return out


#: the word decoder's test sentences (a corpus and the val labels)
SENTENCES = ["i want to drink some water", "please turn on the light", "two cats ate too much",
             "where is the doctor", "i want some water", "the doctor is here", "turn off the light"]


@pytest.fixture(scope="session")
def words(tmp_path_factory) -> dict[str, Path]:
    """``corpus`` (text), ``lm`` (a 3-gram ARPA of it), ``logits`` (a val npz of 4 trials with
    labels, 41 classes) and ``nbest`` (a valid n-best CSV of those 4 trials)."""
    from fastbci.lm import Hypothesis, build_arpa
    from fastbci.lm.run import write_nbest
    root = tmp_path_factory.mktemp("faults_words")
    (root / "corpus.txt").write_text("\n".join(SENTENCES) + "\n")
    build_arpa(root / "corpus.txt", root / "lm.arpa", order=3)
    rng = np.random.default_rng(0)
    lengths = np.array([30, 25, 0, 40])
    off = np.concatenate([[0], np.cumsum(lengths)])
    np.savez(root / "logits_val.npz", logits=rng.standard_normal((int(off[-1]), 41)).astype(np.float32),
             offsets=off, ids=np.arange(4), sentence_label=np.array(SENTENCES[:4]))
    hyps = [[Hypothesis(text=t, score=-10.0 - r, acoustic=-8.0 - r, lm=-2.0 - r / 2, n_words=len(t.split()))
             for r, t in enumerate([s, s.replace("the", "a")])] for s in SENTENCES[:4]]
    write_nbest(root / "nbest.csv", range(4), hyps, 1.5)
    return {"corpus": root / "corpus.txt", "lm": root / "lm.arpa", "logits": root / "logits_val.npz",
            "nbest": root / "nbest.csv", "root": root}


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    """A tiny GPT-2 saved with save_pretrained (needs transformers)."""
    pytest.importorskip("transformers", reason="transformers (pip install 'fastbci[llm]')")
    from fastbci.lm.tinylm import make_tiny_lm
    folder = tmp_path_factory.mktemp("faults_llm") / "gpt2"
    return Path(make_tiny_lm(folder, SENTENCES, init=0.5)["folder"])
