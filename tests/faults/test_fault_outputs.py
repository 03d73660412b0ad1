"""The output-folder family: every command that writes follows the output rule
(fastbci.outputs): an output that is, contains or lies inside an input, or that holds files the
command did not write, is refused with exit 2 whatever the flags, and nothing of the input is
touched; own outputs need --overwrite. Each case below destroyed or overwrote a file, exiting 0,
before the rule."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from fastbci import commands, synth

OFFICIAL_RUN = ["model.n_units=8", "model.n_layers=1", "dataset.batch_size=4", "dataset.days_per_batch=2",
                "num_training_batches=2", "fastbci.device=cpu", "fastbci.impl=reference",
                "fastbci.progress=false", "fastbci.plot=false"]


def digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (or ``root`` itself) with the hash of its bytes."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def refused(capsys, argv, *words) -> str:
    code = commands.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and all(w in err for w in words), err
    return err


@pytest.fixture
def release(data_copy):
    """A private copy of the small release (the tests try to destroy it)."""
    return data_copy


@pytest.mark.parametrize("where", ["is", "inside", "contains"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_train_never_writes_into_its_data(release, tmp_path, capsys, where, overwrite):
    out = {"is": release, "inside": release / "runs" / "a", "contains": tmp_path}[where]
    before = digest(release)
    refused(capsys, ["train", release / "synth_config.yaml", f"dataset.dataset_dir={release}",
                     f"output_dir={out}", f"checkpoint_dir={out}/checkpoint", *OFFICIAL_RUN,
                     *(["--overwrite"] if overwrite else [])],
            "data folder", "which the command reads", "refused even with fastbci.overwrite=true")
    assert digest(release) == before


def test_train_never_deletes_a_checkpoint_it_starts_from(release, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    init = out / "checkpoint" / "start"
    shutil.copy(tiny_checkpoint, init)
    refused(capsys, ["train", release / "synth_config.yaml", f"output_dir={out}",
                     f"checkpoint_dir={out}/checkpoint", "init_from_checkpoint=true",
                     f"init_checkpoint_path={init}", "--overwrite", *OFFICIAL_RUN],
            "init_checkpoint_path", "refused even with")
    assert init.read_bytes() == tiny_checkpoint.read_bytes()


def test_synth_never_overwrites_a_release_it_did_not_write(release, tmp_path, capsys):
    foreign = tmp_path / "f"
    (foreign / "t15.2023.08.13").mkdir(parents=True)
    hdf5 = foreign / "t15.2023.08.13" / "data_train.hdf5"
    hdf5.write_bytes(b"\x89HDF\r\n\x1a\n the user's own recording")
    for extra in ([], ["--overwrite"]):
        refused(capsys, ["synth", "--out", foreign, "--small", *extra], "did not write",
                "data_train.hdf5")
    assert hdf5.read_bytes().endswith(b"own recording")


def test_synth_replaces_its_own_release_only_when_asked(tmp_path, capsys):
    out = tmp_path / "data_small"
    assert commands.main(["synth", "--out", str(out), "--small"]) == 0
    before = digest(out)
    refused(capsys, ["synth", "--out", out, "--small", "--seed", "5"], "other parameters", "seed 0",
            "--overwrite")
    assert digest(out) == before
    assert commands.main(["synth", "--out", str(out), "--small"]) == 0  # the same: left as it is
    assert "already holds this release" in capsys.readouterr().out and digest(out) == before
    assert commands.main(["synth", "--out", str(out), "--small", "--seed", "5", "--overwrite"]) == 0
    assert synth.read_params(out)["seed"] == 5


def _logits(path: Path) -> Path:
    np.savez(path, logits=np.zeros((4, 41), np.float32), offsets=np.array([0, 2, 4]),
             sentence_label=np.array(["a", "b"]))
    return path


def test_lm_decode_never_replaces_its_logits(tmp_path, capsys):
    pytest.importorskip("flashlight.lib.text", reason="flashlight-text (pip install 'fastbci[lm]')")
    x = _logits(tmp_path / "X.npz")
    (tmp_path / "c.txt").write_text("a b\n")
    assert commands.main(["lm", "build", "--corpus", str(tmp_path / "c.txt"), "--out",
                          str(tmp_path / "lm.arpa")]) == 0
    before = x.read_bytes()
    for option in ("--out", "--nbest-file"):
        refused(capsys, ["lm", "decode", "--logits", x, "--lm", tmp_path / "lm.arpa", option, x,
                         "--overwrite"], "it is the logits file", "refused even with --overwrite")
    assert x.read_bytes() == before


def test_lm_build_never_replaces_its_corpus(tmp_path, capsys):
    c = tmp_path / "corpus.txt"
    c.write_text("the cat\na dog\n")
    refused(capsys, ["lm", "build", "--corpus", c, "--out", c, "--overwrite"], "it is the corpus")
    assert c.read_text() == "the cat\na dog\n"
    mine = tmp_path / "lm.arpa"
    mine.write_text("my model")
    refused(capsys, ["lm", "build", "--corpus", c, "--out", mine, "--overwrite"], "fastbci did not write it")
    assert mine.read_text() == "my model"


def test_lm_tune_and_rescore_never_replace_their_inputs(tmp_path, capsys):
    x = _logits(tmp_path / "logits_val.npz")
    (tmp_path / "lm.arpa").write_text("")
    refused(capsys, ["lm", "tune", "--logits", x, "--lm", tmp_path / "lm.arpa", "--out", x],
            "it is the logits file")
    nb = tmp_path / "nb.csv"
    nb.write_text("id,rank,score,acoustic_score,lm_score,lm_weight,n_words,text\n0,0,-1,-1,-1,1,1,a\n")
    refused(capsys, ["lm", "rescore", "--nbest-file", nb, "--llm", tmp_path, "--out", nb],
            "it is the n-best file")
    assert nb.read_text().endswith(",a\n")


def test_calibrate_never_replaces_another_commands_files(release, tiny_checkpoint, tmp_path, capsys):
    run = tiny_checkpoint.parent
    before = digest(run)
    session = release / "t15.2023.08.18" / "data_train.hdf5"
    base = ["calibrate", "--checkpoint", tiny_checkpoint, "--session", session, "--replace",
            "--steps", "1", "--quiet"]
    # --out RUN/checkpoint holds the checkpoint being read and the run's args.yaml
    refused(capsys, [*base, "--out", run, "--overwrite"], "contains the checkpoint")
    other = tmp_path / "other"
    shutil.copytree(run, other)  # a copy of the run folder: its files written by 'fastbci train'
    other_ck = tmp_path / "ck"
    shutil.copy(tiny_checkpoint, other_ck)
    refused(capsys, [*base[:2], other_ck, *base[3:], "--out", other, "--overwrite"],
            "'fastbci train'", "never replaces")
    assert digest(run) == before


def test_calibrate_replaces_another_calibration_only_when_asked(release, tiny_checkpoint, tmp_path,
                                                              capsys):
    out = tmp_path / "cal"
    base = ["calibrate", "--checkpoint", str(tiny_checkpoint), "--replace", "--steps", "1", "--quiet",
            "--out", str(out)]
    first = str(release / "t15.2023.08.18" / "data_train.hdf5")
    assert commands.main([*base, "--session", first]) == 0
    before = digest(out)
    second = str(release / "t15.2023.08.13" / "data_train.hdf5")
    refused(capsys, [*base, "--session", second], "already exists", "--overwrite")
    assert digest(out) == before
    assert commands.main([*base, "--session", second, "--overwrite"]) == 0


def test_evaluate_never_writes_into_the_checkpoints_folder_or_the_data(tiny_checkpoint, small_release,
                                                                      capsys):
    before = digest(tiny_checkpoint.parent)
    refused(capsys, ["evaluate", "--checkpoint", tiny_checkpoint, "--out", tiny_checkpoint.parent,
                     "--overwrite"], "contains the checkpoint")
    refused(capsys, ["evaluate", "--checkpoint", tiny_checkpoint, "--out", small_release / "eval"],
            "lies inside the data folder")
    assert digest(tiny_checkpoint.parent) == before
    assert not (small_release / "eval").exists()


def test_an_output_folder_that_is_a_link_loop_is_named(release, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    refused(capsys, ["train", release / "synth_config.yaml", f"output_dir={loop}",
                     f"checkpoint_dir={loop}/checkpoint", *OFFICIAL_RUN], "symbolic link loop")
    refused(capsys, ["synth", "--out", loop, "--small"], "is not a folder")
    assert loop.is_symlink()
