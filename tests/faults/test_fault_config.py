"""The configuration family: a bad value (wrong type, out of range), a key given twice, a section
given a value, a file that is not UTF-8 or not YAML is refused before anything is read or
created, with exit status 2 and a message naming the key (its lines, its range) and the file."""
from __future__ import annotations

import pytest
from faultkit import Case, check, command, train_argv

DUPLICATE = """# two values for one key: YAML keeps the second without a word
dataset:
  batch_size: 4
  n_classes: 41
  batch_size: 8
"""


def _file(text: str | bytes):
    """A case whose configuration file holds ``text`` (DATA: the release's folder)."""
    def make(tmp_path, release, words):
        p = tmp_path / "config.yaml"
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text.replace("DATA", str(release)))
        return "train", train_argv(p, tmp_path / "run"), p
    return make


def _override(*pairs: str):
    def make(tmp_path, release, words):
        return "train", train_argv(release / "synth_config.yaml", tmp_path / "run", *pairs), \
            release / "synth_config.yaml"
    return make


def _directory(tmp_path, release, words):
    return "train", train_argv(tmp_path, tmp_path / "run"), tmp_path


def _decoder_params(tmp_path, release, words):
    """Every YAML file a user gives fastbci is read alike: a decoder parameter file too."""
    p = tmp_path / "params.yaml"
    p.write_text("decoder:\n  lm_weight: 2.0\n  word_score: 0.5\n  lm_weight: 3.0\n")
    return "lm", ["decode", "--logits", words["logits"], "--lm", words["lm"], "--params", p,
                  "--out", tmp_path / "run" / "words.csv"], p


# name: (the command, its arguments and the file at fault; the words the message must hold, with
# FILE for that file)
CASES = {
    "bad-type": (_override("dataset.batch_size=forty"), ["dataset.batch_size", "'forty'", "an integer"]),
    "out-of-range": (_override("lr_max=-1"), ["'lr_max'", "-1", "out of range", "allowed"]),
    "unknown-key": (_override("dataset.batch_sise=4"),
                    ["dataset.batch_sise", "did you mean 'dataset.batch_size'"]),
    "duplicate-key": (_file(DUPLICATE), ["FILE", "'dataset.batch_size'", "given twice", "line 3", "line 5"]),
    "duplicate-key-of-a-list": (_file("dataset:\n  sessions: [a]\n  dataset_probability_val: [1]\n"
                                      "  sessions: [b]\n"), ["FILE", "'dataset.sessions'", "line 2", "line 4"]),
    "duplicate-key-in-decoder-params": (_decoder_params, ["FILE", "'decoder.lm_weight'", "line 2", "line 4"]),
    "section-given-a-value-override": (_override("model=3"), ["'model'", "is a section, not a key",
                                                              "model.n_input_features=", "n_units"]),
    "section-given-a-value-in-file": (_file("dataset:\n  dataset_dir: DATA\nmodel: 3\n"),
                                      ["'model'", "FILE", "is a section, not a key", "n_units"]),
    "key-given-a-section": (_override("lr_max.peak=0.01"),
                            ["'lr_max'", "takes a value, not a section", "lr_max.peak"]),
    "not-utf8": (_file("lr_max: 0.005\nmodel:\n  n_units: 8  # caf\xe9\n".encode("latin-1")),
                 ["FILE", "not UTF-8", "byte 0xe9", "line 3"]),
    "not-yaml": (_file("dataset:\n  batch_size: [4\nlr_max: 0.005\n"), ["FILE", "is not valid YAML", "line"]),
    "not-a-mapping": (_file("- lr_max\n- 0.005\n"), ["FILE", "must hold a mapping"]),
    "config-is-a-directory": (_directory, ["FILE", "is a directory"]),
}


@pytest.mark.parametrize("fault", list(CASES))
def test_config_fault(fault, release, words, tmp_path, capsys):
    make, want = CASES[fault]
    name, argv, at_fault = make(tmp_path, release, words)
    check(Case(run=lambda: command(name)(argv), words=[w.replace("FILE", str(at_fault)) for w in want],
               inputs=[at_fault, release, words["root"]], outputs=[tmp_path / "run"]), capsys)
