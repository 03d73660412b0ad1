"""Checkpoints never run code on load, detect bit rot, and survive a full disk."""
import errno
import os
import warnings

import numpy as np
import pytest
import torch

from fastbci import checkpoint as ckpt_io
from fastbci import outputs
from fastbci.fileio import StorageError


class _Evil:
    """A pickle payload that writes a file when unpickled (what a crafted checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _official(path, **extra):
    """An official-style checkpoint: state dicts, a float val_PER and a numpy float64 val_loss
    (the official trainer stores np.mean of its losses)."""
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(m.parameters(), lr=0.01)
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ck = {"model_state_dict": {f"_orig_mod.{k}": v for k, v in m.state_dict().items()},
          "optimizer_state_dict": opt.state_dict(), "scheduler_state_dict": sched.state_dict(),
          "val_PER": 0.25, "val_loss": np.mean([1.0, 2.0]), **extra}
    torch.save(ck, path)
    return ck


def _fastbci(path):
    m = torch.nn.Linear(64, 32)
    with torch.no_grad():
        m.weight.fill_(1.2345)
    opt = torch.optim.AdamW(m.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = {"next_batch": 3, "rng": ckpt_io.capture_rng_state(),
             "train_losses": np.arange(3, dtype=np.float32), "val_history": [{"per": 0.5}],
             "config": {"a": [1, None, "x"]}, "best_val_loss": float("inf")}
    ck = ckpt_io.build_checkpoint(m.state_dict(), opt, sched, 0.5, 1.0, state)
    ckpt_io.atomic_save(ck, path)
    return ck


def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil_ckpt"
    torch.save({"model_state_dict": {}, "payload": _Evil(marker)}, bad)
    with pytest.raises(ckpt_io.CheckpointError, match="arbitrary unpickling") as e:
        ckpt_io.load(bad)
    assert "posix.system" in str(e.value) or "os.system" in str(e.value), str(e.value)
    assert "trust_checkpoint" in str(e.value)
    assert not marker.exists(), "loading ran the payload"
    # the documented opt-in loads it, with a warning
    with pytest.warns(UserWarning, match="full unpickling"):
        ckpt_io.load(bad, trust=True)
    assert marker.exists()


def test_official_and_fastbci_checkpoints_load_without_unpickling(tmp_path):
    want = _official(tmp_path / "off")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no trust warning: weights-only load
        got = ckpt_io.load(tmp_path / "off")
    assert got["val_loss"] == pytest.approx(1.5) and got["val_PER"] == 0.25
    for k, v in want["model_state_dict"].items():
        assert torch.equal(got["model_state_dict"][k], v)
    ck = _fastbci(tmp_path / "fb")
    got = ckpt_io.load(tmp_path / "fb")
    st = ckpt_io.resume_state_of(got, tmp_path / "fb")
    assert st["next_batch"] == 3 and np.array_equal(st["train_losses"], np.arange(3))
    assert got[ckpt_io.CHECKSUM_KEY] == ck[ckpt_io.CHECKSUM_KEY]
    ckpt_io.restore_rng_state(st["rng"])  # the generator states round-trip


def _flip(path, needle: bytes, n: int = 64):
    raw = bytearray(path.read_bytes())
    at = raw.find(needle)
    assert at >= 0, "the tensor's bytes are not in the file"
    for i in range(at, at + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_bit_rot_in_a_tensor_is_detected(tmp_path):
    p = tmp_path / "ck"
    _fastbci(p)
    ckpt_io.load(p)
    _flip(p, np.full(16, 1.2345, dtype=np.float32).tobytes(), n=48)
    with pytest.raises(ckpt_io.CheckpointError, match="corrupt") as e:
        ckpt_io.load(p)
    assert str(p) in str(e.value)
    # an official checkpoint has no checksum: the same damage cannot be seen, and it loads
    q = tmp_path / "off"
    ck = _official(q)
    _flip(q, ck["model_state_dict"]["_orig_mod.weight"].numpy().tobytes()[:16], n=8)
    ckpt_io.load(q)


@pytest.mark.parametrize("failure", ["oserror", "torch"])
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    p = tmp_path / "resume_checkpoint"
    _fastbci(p)
    before = p.read_bytes()

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        if failure == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 30336 vs 30224")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(StorageError, match="no space left on .* writing .*resume_checkpoint"):
        ckpt_io.atomic_save({"model_state_dict": {}}, p)
    assert p.read_bytes() == before, "the previous checkpoint was damaged"
    assert [x.name for x in tmp_path.iterdir() if x.name != outputs.MARKER] == ["resume_checkpoint"], \
        "a temporary file is left"
