"""The checkpoint family: a checkpoint that is truncated, has bit rot (its checksum), holds a
crafted pickle, is not a checkpoint at all or belongs to another model, and an LLM folder whose
weights are truncated, are refused with exit status 2 and a message naming the file; a crafted
pickle runs nothing."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from faultkit import Case, check, command

from fastbci import checkpoint as ckpt_io


class _Evil:
    """A pickle payload that creates a file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _truncated(ck):
    raw = ck.read_bytes()
    ck.write_bytes(raw[:len(raw) * 2 // 3])
    return ["cannot read checkpoint", "a zip archive"]


def _bit_rot(ck):
    sd = ckpt_io.load(ck)["model_state_dict"]
    weight = next(v for k, v in sd.items() if v.dtype == torch.float32 and v.numel() >= 64)
    needle = weight.flatten()[:16].numpy().tobytes()
    raw = bytearray(ck.read_bytes())
    at = raw.find(needle)
    assert at >= 0, "the tensor's bytes are not in the file"
    raw[at:at + 32] = bytes(b ^ 0xFF for b in raw[at:at + 32])
    ck.write_bytes(bytes(raw))
    return ["corrupt"]


def _pickle(ck):
    marker = ck.parent / "pwned"
    torch.save({"model_state_dict": {}, "payload": _Evil(marker)}, ck)
    return ["arbitrary unpickling", "--trust-checkpoint"]


def _text(ck):
    ck.write_text("epoch 3: loss 0.5\n")
    return ["is not a checkpoint", "text ('epoch 3: loss 0.5')"]


def _empty(ck):
    ck.write_bytes(b"")
    return ["is not a checkpoint", "empty (0 bytes)"]


def _other_model(ck):
    return ["does not fit the model of the configuration stored in", "shape mismatches"], ["model.n_units=16"]


def _directory(ck):
    ck.unlink()
    ck.mkdir()
    return ["is a directory, not a file"]


CASES = {"truncated": _truncated, "bit-rot": _bit_rot, "crafted-pickle": _pickle, "a-text-file": _text,
         "empty-file": _empty, "another-model": _other_model, "a-directory": _directory}


@pytest.mark.parametrize("fault", [*CASES, "llm-truncated-weights", "llm-weights-of-zero-bytes"])
def test_checkpoint_fault(fault, trained, release, tmp_path, capsys, request):
    if fault.startswith("llm-"):
        return _llm_fault(fault, request.getfixturevalue("tiny_llm"), request.getfixturevalue("words"),
                          tmp_path, capsys)
    folder = tmp_path / "checkpoint"
    shutil.copytree(trained / "checkpoint", folder)
    ck = folder / "best_checkpoint"
    want = CASES[fault](ck)
    want, extra = want if isinstance(want, tuple) else (want, [])
    out = tmp_path / "run"
    argv = ["--checkpoint", ck, "--split", "val", "--out", out, "--quiet", *extra]
    check(Case(run=lambda: command("evaluate")(argv), words=[str(ck), *want], inputs=[folder, release],
               outputs=[out]), capsys)
    assert not (folder / "pwned").exists(), "loading the checkpoint ran its payload"


def _llm_fault(fault, tiny_llm, words, tmp_path, capsys):
    folder = tmp_path / "llm"
    shutil.copytree(tiny_llm, folder)
    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[:len(raw) // 2] if fault == "llm-truncated-weights" else b"")
    out = tmp_path / "run" / "words.csv"
    argv = ["rescore", "--nbest-file", words["nbest"], "--llm", folder, "--llm-device", "cpu", "--out", out]
    check(Case(run=lambda: command("lm")(argv), words=[f"its weights file {weights} is truncated or corrupt"],
               inputs=[folder, words["root"]], outputs=[out]), capsys)
