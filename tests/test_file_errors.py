"""Every file error says what the path is: missing, a directory, a symbolic-link loop,
unreadable, not UTF-8, empty, not a checkpoint, damaged; always with the path (issue #22, items
1, 11, 12; the data files: tests/test_data_files.py)."""
from __future__ import annotations

import builtins
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastbci import checkpoint as ckpt_io
from fastbci.commands import main as fastbci
from fastbci.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def odd_paths(tmp_path):
    """A directory, a symbolic-link loop, a broken link, a file, a FIFO and a missing path."""
    (tmp_path / "adir").mkdir()
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    os.symlink(tmp_path / "nowhere", tmp_path / "broken")
    (tmp_path / "afile").write_text("key: 1\n")
    os.mkfifo(tmp_path / "fifo")
    return tmp_path


def test_path_problem_says_what_a_path_is(odd_paths, monkeypatch):
    from fastbci.fileio import path_problem
    t = odd_paths
    assert path_problem(t / "afile") is None and path_problem(t / "adir", "dir") is None
    assert path_problem(t / "adir") == "is a directory, not a file"
    assert path_problem(t / "afile", "dir") == "is a file, not a folder"
    assert "symbolic link loop" in path_problem(t / "loop")
    assert "symbolic link loop" in path_problem(t / "loop", "dir")
    assert "broken symbolic link" in path_problem(t / "broken")
    assert "not a regular file" in path_problem(t / "fifo")
    assert path_problem(t / "missing") == "not found"
    assert "its folder" in path_problem(t / "no" / "such" / "file")
    assert "a folder of its path is a file" in path_problem(t / "afile" / "x")
    # no permission (simulated: the tests may run as root, who may read anything)
    real_open = builtins.open

    def denied(p, *a, **k):
        if Path(p) == t / "afile":
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, *a, **k)

    monkeypatch.setattr(builtins, "open", denied)
    assert path_problem(t / "afile") == "cannot be read (permission denied)"


def test_file_kind_from_the_first_bytes(tmp_path):
    from fastbci.fileio import file_kind
    cases = {"empty": b"", "text": "élan: 1\n".encode(), "zip": b"PK\x03\x04rest",
             "pickle": b"\x80\x04\x95rest", "bin": bytes(range(256)),
             "h5": b"\x89HDF\r\n\x1a\n" + bytes(8)}
    want = {"empty": "empty (0 bytes)", "text": "text ('élan: 1')", "zip": "a zip archive",
            "pickle": "a pickle", "bin": "binary data", "h5": "an HDF5 file"}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        assert file_kind(tmp_path / name) == want[name], name
    # a UTF-8 character cut by the 512-byte window is still text
    (tmp_path / "long").write_bytes(b"a" * 511 + "é".encode())
    assert file_kind(tmp_path / "long").startswith("text")


# -- 1. a configuration file that is not UTF-8 ---------------------------------------------------
@pytest.mark.parametrize("raw", [bytes(range(128, 256)) * 2, "lr_max: 0.002  # café\n".encode("latin-1")],
                         ids=["random bytes", "latin-1"])
def test_a_config_file_that_is_not_utf8_is_named(tmp_path, capsys, raw):
    p = tmp_path / "cfg.yaml"
    p.write_bytes(raw)
    with pytest.raises(ConfigError, match=rf"config file {p} is not UTF-8 text \(byte 0x[0-9a-f]{{2}} "
                                          r"at line 1"):
        load_config(p)
    ck = _weights(tmp_path / "ck")  # evaluate reads the checkpoint, then --config
    for run in (lambda: fastbci(["doctor", str(p)]), lambda: fastbci(["train", str(p)]),
                lambda: fastbci(["evaluate", "--checkpoint", str(ck), "--config", str(p)])):
        capsys.readouterr()
        code = run()
        err = capsys.readouterr().err
        assert code == 2 and str(p) in err and "not UTF-8" in err and "Traceback" not in err, err


def test_the_doctor_on_a_non_utf8_file_exits_2_in_a_child_process(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_bytes(os.urandom(64) + b"\xf2\x80")
    proc = subprocess.run([sys.executable, "-m", "fastbci.doctor", str(p)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "not UTF-8" in proc.stderr and str(p) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_config_path_that_is_not_a_file_is_named(odd_paths):
    for name, words in (("adir", "is a directory"), ("loop", "is a symbolic link loop"),
                        ("missing", "not found")):
        with pytest.raises(ConfigError, match=rf"config file {odd_paths / name} {words}"):
            load_config(odd_paths / name)


# -- 11, 12. checkpoints ------------------------------------------------------------------------
def _weights(path):
    torch.save({"model_state_dict": {"w": torch.ones(64)}}, path)
    return path


def test_a_text_file_or_an_empty_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("epoch 3: loss 0.5\n")
    (tmp_path / "empty").write_bytes(b"")
    for name, kind in (("notes.txt", "text ('epoch 3: loss 0.5')"), ("empty", "empty (0 bytes)")):
        with pytest.raises(ckpt_io.CheckpointError) as e:
            ckpt_io.load(tmp_path / name)
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path / name} is not a checkpoint: it is {kind}"), msg
        assert "weights_only" not in msg and "trust_checkpoint" not in msg and "EOFError" not in msg


def test_evaluate_on_a_text_file_says_it_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "model.txt").write_text("hello\n")
    assert fastbci(["evaluate", "--checkpoint", str(tmp_path / "model.txt"), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "is not a checkpoint" in err and "weights_only" not in err and "--trust" not in err, err


def test_a_path_that_is_not_a_file_is_named_as_what_it_is(odd_paths, capsys):
    for name, words in (("adir", "is a directory, not a file"), ("loop", "is a symbolic link loop"),
                        ("missing", "not found")):
        with pytest.raises(ckpt_io.CheckpointError, match=f"checkpoint {odd_paths / name} {words}"):
            ckpt_io.load(odd_paths / name)
        assert fastbci(["evaluate", "--checkpoint", str(odd_paths / name)]) == 2
        assert words in capsys.readouterr().err


def test_a_damaged_checkpoint_names_the_other_checkpoints_of_its_folder(tmp_path):
    raw = _weights(tmp_path / "best_checkpoint").read_bytes()
    (tmp_path / "resume_checkpoint").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "args.yaml").write_text("{}\n")
    with pytest.raises(ckpt_io.CheckpointError) as e:
        ckpt_io.load(tmp_path / "resume_checkpoint")
    msg = str(e.value)
    assert "cannot read checkpoint" in msg and "a zip archive" in msg, msg
    assert msg.endswith(f"other checkpoints in {tmp_path}: best_checkpoint"), msg
    assert "trust_checkpoint" not in msg and "weights_only" not in msg


def test_a_checksum_mismatch_advises_another_checkpoint_not_itself(tmp_path):
    from test_checkpoint_safety import _fastbci, _flip
    p = tmp_path / "resume_checkpoint"
    _fastbci(p)
    _weights(tmp_path / "checkpoint_batch_2000")
    _flip(p, np.full(16, 1.2345, dtype=np.float32).tobytes(), n=48)
    with pytest.raises(ckpt_io.CheckpointError, match="corrupt") as e:
        ckpt_io.load(p)
    advice = str(e.value).split("use another checkpoint", 1)[1]
    assert "checkpoint_batch_2000" in advice and "resume_checkpoint" not in advice, str(e.value)
    q = tmp_path / "alone" / "best_checkpoint"
    q.parent.mkdir()
    _fastbci(q)
    _flip(q, np.full(16, 1.2345, dtype=np.float32).tobytes(), n=48)
    with pytest.raises(ckpt_io.CheckpointError, match="holds no other checkpoint"):
        ckpt_io.load(q)


def test_trust_is_advised_only_for_a_real_checkpoint_that_needs_it(tmp_path):
    import pickle
    (tmp_path / "plain").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ckpt_io.CheckpointError) as e:
        ckpt_io.load(tmp_path / "plain")
    assert "trust-checkpoint" not in str(e.value) and "a pickle" in str(e.value)
    torch.save({"model_state_dict": {}, "x": Path("p")}, tmp_path / "needs_trust")
    with pytest.raises(ckpt_io.CheckpointError, match="--trust-checkpoint"):
        ckpt_io.load(tmp_path / "needs_trust")
