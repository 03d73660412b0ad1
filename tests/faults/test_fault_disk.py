"""The disk family: every command that writes, writing on a full disk (a small tmpfs; skipped
with the reason where this machine may not mount one), exits 2 with one message that names the
device and the file it was writing, and leaves no partial file: each file is either complete or
absent, and no temporary file remains. A read-only disk, an output path that is a folder or lies
under a file or a link loop are the same kind of error, named alike."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
from faultkit import Case, check, command, digest, files_under, small_disk, train_argv

from fastbci.errors import run_command


def _synth(disk, ctx):
    out = disk / "release"

    def complete():  # what was written before the disk filled up is whole: every file reads
        from fastbci.data import read_session_file
        found = [p for p in out.rglob("*.hdf5")]
        for p in found:
            assert read_session_file(p, p.name[5:-5]), p
        assert {p.name for p in out.rglob("*") if p.is_file()} <= {
            "data_train.hdf5", "data_val.hdf5", "data_test.hdf5", ".fastbci-outputs.json"}, files_under(out)

    return ("synth", ["--out", out, "--small"], ["writing", str(out)], [], complete)


def _synth_child(disk, ctx):
    """The same in a child process: no HDF5 error at exit, no crash (exit -11 before)."""
    name, argv, want, outputs, complete = _synth(disk, ctx)

    def run() -> int:
        proc = subprocess.run([sys.executable, "-m", "fastbci.synth", *map(str, argv)], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        sys.stderr.write(proc.stderr)
        return proc.returncode

    return run, None, want, outputs, complete


def _lm_build(disk, ctx):
    return ("lm", ["build", "--corpus", ctx["words"]["corpus"], "--out", disk / "lm.arpa"],
            [f"writing {disk / 'lm.arpa'}"], [disk / "lm.arpa"], None)


def _lm_decode_words(disk, ctx):
    w = ctx["words"]
    return ("lm", ["decode", "--logits", w["logits"], "--lm", w["lm"], "--workers", "1",
                   "--out", disk / "words.csv"], [f"writing {disk / 'words.csv'}"], [disk / "words.csv"], None)


def _lm_decode_nbest(disk, ctx):
    w, other = ctx["words"], ctx["tmp_path"] / "words.csv"
    return ("lm", ["decode", "--logits", w["logits"], "--lm", w["lm"], "--workers", "1", "--out", other,
                   "--nbest", "3", "--nbest-file", disk / "nbest.csv"], [f"writing {disk / 'nbest.csv'}"],
            [disk / "nbest.csv"], None)


def _lm_tune(disk, ctx):
    w = ctx["words"]
    return ("lm", ["tune", "--logits", w["logits"], "--lm", w["lm"], "--workers", "1", "--lm-weights", "1",
                   "--word-scores", "0", "--rounds", "0", "--out", disk / "decoder_params.yaml"],
            [f"writing {disk / 'decoder_params.yaml'}"], [disk / "decoder_params.yaml"], None)


def _train(disk, ctx):
    out = disk / "run"

    def only_the_log():  # train.log is append-only (whole lines); nothing else was written
        assert files_under(out) in ([], ["train.log"]), files_under(out)
        log = (out / "train.log").read_text() if (out / "train.log").exists() else ""
        assert log == "" or log.endswith("\n"), log[-200:]

    return ("train", train_argv(ctx["release"] / "synth_config.yaml", out), [f"writing {out}"], [out],
            only_the_log)


def _evaluate(disk, ctx):
    ck = ctx["trained"] / "checkpoint" / "best_checkpoint"
    return ("evaluate", ["--checkpoint", ck, "--split", "val", "--out", disk / "eval", "--quiet"],
            [f"writing {disk / 'eval'}"], [disk / "eval"], None)


def _curves(disk, ctx):
    from fastbci.training.report import plot_curves
    pytest.importorskip("matplotlib")
    recs = [{"batch": k, "split": "train", "loss": 2.0 - k / 10, "lr": 0.01} for k in range(5)]
    png = disk / "training_curves.png"
    return (lambda: run_command(lambda: plot_curves(recs, png, np.linspace(2, 1, 5)) and 0, prog="plot"),
            None, [f"writing {png}"], [png], None)


def _lexicon(disk, ctx):
    from fastbci.lm import Lexicon
    lex = Lexicon({"water": [[30, 1, 29, 10]], "drink": [[8, 28, 17, 20, 16]]})
    path = disk / "lexicon.txt"
    return (lambda: run_command(lambda: lex.write(path) and 0, prog="lexicon"), None, [f"writing {path}"],
            [path], None)


def _read_only(disk, ctx):
    w = ctx["words"]
    return ("lm", ["build", "--corpus", w["corpus"], "--out", disk / "lm.arpa"],
            [f"cannot write {disk / 'lm.arpa'}: Read-only file system"], [disk / "lm.arpa"], None)


def _out_is_a_folder(disk, ctx):
    w = ctx["words"]
    (disk / "words.csv").mkdir()
    return ("lm", ["decode", "--logits", w["logits"], "--lm", w["lm"], "--workers", "1", "--out", disk / "words.csv"],
            [f"--out {disk / 'words.csv'} is a folder: give a file name"], [], None)


def _out_under_a_file(disk, ctx):
    w = ctx["words"]
    (disk / "afile").write_text("not a folder\n")
    return ("lm", ["build", "--corpus", w["corpus"], "--out", disk / "afile" / "lm.arpa"],
            [f"cannot write {disk / 'afile' / 'lm.arpa'}: a folder of its path, {disk / 'afile'}, is a file, "
             "not a folder"], [], None)


def _out_under_a_link_loop(disk, ctx):
    w = ctx["words"]
    os.symlink(disk / "loop", disk / "loop")
    return ("lm", ["decode", "--logits", w["logits"], "--lm", w["lm"], "--workers", "1",
                   "--out", disk / "loop" / "words.csv"],
            [f"cannot write {disk / 'loop' / 'words.csv'}: a folder of its path, {disk / 'loop'}, is a "
             "symbolic link loop"], [], None)


# name: (the case, the disk: "full" a 64 KiB tmpfs that fills while the command writes, "filled"
# one filled to its last byte before, "read-only" one mounted read-only, None a plain folder)
CASES = {"synth-hdf5": (_synth, "full"), "synth-hdf5-child-process": (_synth_child, "full"),
         "lm-build-arpa": (_lm_build, "filled"), "lm-decode-words-csv": (_lm_decode_words, "filled"),
         "lm-decode-nbest-csv": (_lm_decode_nbest, "filled"), "lm-tune-params-yaml": (_lm_tune, "filled"),
         "train-run-folder": (_train, "filled"), "evaluate-outputs": (_evaluate, "filled"),
         "training-curves-png": (_curves, "filled"), "lexicon": (_lexicon, "filled"),
         "read-only-disk": (_read_only, "read-only"), "output-is-a-folder": (_out_is_a_folder, None),
         "output-under-a-file": (_out_under_a_file, None), "output-under-a-link-loop": (_out_under_a_link_loop, None)}


@pytest.mark.parametrize("fault", list(CASES))
def test_disk_fault(fault, release, trained, words, tmp_path, capsys):
    make, kind = CASES[fault]
    ctx = {"release": release, "trained": trained, "words": words, "tmp_path": tmp_path}
    disk_of = (contextlib.nullcontext(tmp_path / "disk") if kind is None else
               small_disk(tmp_path / "disk", "64k", fill=kind == "filled", readonly=kind == "read-only"))
    (tmp_path / "disk").mkdir(exist_ok=True)
    with disk_of as disk:
        name, argv, want, outputs, complete = make(disk, ctx)
        before = digest(disk)
        run = name if callable(name) else (lambda: command(name)(argv))
        full = ["no space left on", str(disk)] if kind in ("full", "filled") else []
        check(Case(run=run, words=[*full, *want], inputs=[release, trained / "checkpoint", words["root"]],
                   outputs=outputs or [disk], expect_outputs=complete or (lambda: None)), capsys)
        if not outputs and complete is None:
            assert digest(disk) == before, "the folder of the output was changed"
