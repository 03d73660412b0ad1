"""The record of what fastbci wrote and the output rule every command follows (fastbci.outputs):
an output never is, contains or lies inside an input, never replaces a file fastbci did not
write (nor another kind of command's), and replaces its own kind's files only when asked."""
from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from fastbci import fileio, outputs
from fastbci.outputs import OutputError, check_dir, check_file, check_files, clear, holdings


def _write(path, text="x", command=None):
    if command is None:
        fileio.atomic_write_text(path, text)
        return path
    with outputs.writing_as(command):
        fileio.atomic_write_text(path, text)
    return path


def test_every_atomic_write_is_recorded_with_its_command(tmp_path):
    _write(tmp_path / "a.txt")
    _write(tmp_path / "b.txt", command="evaluate")
    fileio.append_line(tmp_path / "log.jsonl", "{}")
    rec = outputs.recorded(tmp_path)
    assert rec["a.txt"]["by"] == "python" and rec["b.txt"]["by"] == "evaluate"
    assert "log.jsonl" in rec and outputs.MARKER not in rec
    (tmp_path / "mine.txt").write_text("the user's")
    h = holdings(tmp_path, "evaluate")
    assert [p.name for p in h.foreign] == ["mine.txt"]
    assert sorted(p.name for p in h.own) == ["a.txt", "b.txt", "log.jsonl"]


def _record_many(folder, k):
    with outputs.writing_as("train"):
        for i in range(40):
            fileio.atomic_write_text(os.path.join(folder, f"p{k}-{i}"), "x")


def test_concurrent_writers_lose_no_record(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), k)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(outputs.recorded(tmp_path)) == 80


def test_a_folder_with_a_file_fastbci_did_not_write_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _write(out / "run.txt", command="train")
    (out / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=r"1 file\(s\) that fastbci did not write .*notes.txt"):
            check_dir(out, command="train", overwrite=overwrite)
    assert (out / "notes.txt").read_text() == "mine"


def test_own_files_are_replaced_only_with_overwrite_and_only_they_are_deleted(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    _write(out / "train.log", command="train")
    _write(out / "checkpoint" / "best", command="train")
    with pytest.raises(OutputError, match="earlier 'fastbci train'.*--overwrite"):
        check_dir(out, command="train")
    plan = check_dir(out, command="demo", overwrite=True)  # train and demo: both training runs
    assert sorted(p.name for p in plan.clear) == ["best", "train.log"]
    clear(plan)
    assert list(out.iterdir()) == [] and out.is_dir()


def test_another_kind_of_commands_files_are_never_replaced(tmp_path):
    out = tmp_path / "ck"
    _write(tmp_path / "ck" / "args.yaml", command="train")
    with pytest.raises(OutputError, match="'fastbci train'.*'fastbci calibrate' never replaces"):
        check_dir(out, command="calibrate", overwrite=True)
    with pytest.raises(OutputError, match="written by 'fastbci train'"):
        check_file(out / "args.yaml", command="calibrate", overwrite=True)
    _write(tmp_path / "words.csv", command="evaluate")
    check_file(tmp_path / "words.csv", command="lm", overwrite=True)  # one kind: words


@pytest.mark.parametrize("where", ["same", "inside", "contains", "link"])
def test_an_output_that_meets_an_input_is_refused_even_with_overwrite(tmp_path, where):
    data = tmp_path / "data"
    (data / "s1").mkdir(parents=True)
    (data / "s1" / "data_train.hdf5").write_bytes(b"\x89HDF")
    os.symlink(data, tmp_path / "alias")
    out = {"same": data, "inside": data / "runs", "contains": tmp_path,
           "link": tmp_path / "alias"}[where]
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="data folder .* which the command reads"):
            check_dir(out, command="train", inputs=[("data folder", data)], overwrite=overwrite)
    logits = tmp_path / "logits.npz"
    logits.write_bytes(b"PK")
    with pytest.raises(OutputError, match=r"it is the logits .* refused even with --overwrite"):
        check_file(tmp_path / "alias" / ".." / "logits.npz", command="lm", overwrite=True,
                   inputs=[("logits", logits)])
    with pytest.raises(OutputError, match="lies inside the data folder"):
        check_file(data / "s1" / "words.csv", command="lm", inputs=[("data folder", data)])
    assert (data / "s1" / "data_train.hdf5").read_bytes() == b"\x89HDF"


def test_output_files(tmp_path):
    check_file(tmp_path / "new.csv", command="lm")  # a new file: fine
    (tmp_path / "user.csv").write_text("mine")
    with pytest.raises(OutputError, match="fastbci did not write it"):
        check_file(tmp_path / "user.csv", command="lm", overwrite=True)
    _write(tmp_path / "w.csv", command="lm")
    with pytest.raises(OutputError, match="already exists .* pass --overwrite"):
        check_file(tmp_path / "w.csv", command="lm")
    check_file(tmp_path / "w.csv", command="lm", overwrite=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_file(tmp_path, command="lm")
    with pytest.raises(OutputError, match="--out and --nbest-file name the same file"):
        check_files([("--nbest-file", tmp_path / "a.csv"), ("--out", tmp_path / "a.csv")],
                    command="lm")


def test_a_tree_a_temporary_and_a_library_call(tmp_path):
    out = tmp_path / "run"
    tb = out / "tensorboard"
    tb.mkdir(parents=True)
    (tb / "events.out.tfevents.1").write_bytes(b"\x00")  # written by TensorBoard itself
    with outputs.writing_as("train"):
        outputs.record(tb, tree=True)
    (out / ".best.tmp99999").write_bytes(b"partial")  # a killed writer's temporary
    _write(out / "args.yaml")  # a library call (no command): every command's
    h = holdings(out, "train")
    assert not h.foreign and not h.others and len(h.own) == 3
    clear(check_dir(out, command="train", overwrite=True))
    assert list(out.iterdir()) == []
