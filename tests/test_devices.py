"""fastbci.devices: the training numerics are scoped (never leak into later code), device and
implementation choice."""
from pathlib import Path

import pytest
import torch

from fastbci.config import ConfigError, load_config
from fastbci.devices import numerics, resolve_impl, select_device

PKG = Path(__file__).resolve().parent.parent / "fastbci"


@pytest.fixture
def restore_flags():
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.deterministic)
    yield before
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.deterministic = before[1]


@pytest.mark.parametrize("start", [("highest", False), ("medium", True)])
def test_cuda_numerics_are_set_inside_and_restored_after(restore_flags, start):
    """The flags are process-wide: inside the context they are the official trainer's (TF32 for
    float32 matmuls, deterministic cuDNN), afterwards the caller's again, also after an error.
    The flags can be set without a GPU, so this runs everywhere."""
    torch.set_float32_matmul_precision(start[0])
    torch.backends.cudnn.deterministic = start[1]
    with numerics(torch.device("cuda", 0)):
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.deterministic is True
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.deterministic) == start
    with pytest.raises(RuntimeError, match="boom"):
        with numerics(torch.device("cuda")):
            raise RuntimeError("boom")
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.deterministic) == start


def test_cpu_numerics_change_nothing(restore_flags):
    torch.set_float32_matmul_precision("highest")
    with numerics(torch.device("cpu")):
        assert torch.get_float32_matmul_precision() == "highest"


def test_no_other_code_sets_the_process_wide_flags():
    """Only devices.numerics may touch them: a bare setting elsewhere would leak again."""
    offenders = []
    for f in PKG.rglob("*.py"):
        if f.name == "devices.py":
            continue
        text = f.read_text()
        for needle in ("set_float32_matmul_precision(", "cudnn.deterministic =",
                       "allow_tf32 ="):
            if needle in text:
                offenders.append(f"{f.relative_to(PKG)}: {needle}")
    assert not offenders, offenders


def test_device_and_impl_choice():
    cfg = load_config(None, ["fastbci.device=cpu"])
    assert select_device(cfg) == torch.device("cpu")
    assert resolve_impl(cfg, torch.device("cpu")) == "reference"
    assert resolve_impl(cfg, torch.device("cuda")) == "fused"
    assert resolve_impl(load_config(None, ["fastbci.impl=fused"]), torch.device("cpu")) == "fused"
    with pytest.raises(ConfigError, match="not a device"):
        select_device(load_config(None, ["fastbci.device=gpu0"]))
    assert select_device(cfg, local_rank=3) == torch.device("cpu")
