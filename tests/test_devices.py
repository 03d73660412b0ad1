"""fastbci.devices: the training numerics are scoped (never leak into later code), device
choice."""
import ast
from pathlib import Path

import pytest
import torch

from fastbci.config import ConfigError, load_config
from fastbci.devices import numerics, select_device

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


#: the process-wide numerics flags: attributes of torch.backends.*, global setter functions and
#: the torch.backends.*.flags(...) context managers
_FLAG_ATTRS = {"allow_tf32", "deterministic", "benchmark", "allow_fp16_reduced_precision_reduction",
               "allow_bf16_reduced_precision_reduction", "fp32_precision"}
_FLAG_SETTERS = {"set_float32_matmul_precision", "use_deterministic_algorithms", "set_flush_denormal"}


def flag_settings(source: str) -> list[str]:
    """Where ``source`` sets a process-wide numerics flag: an assignment (plain, augmented or
    annotated, any spacing) to an attribute of ``torch.backends`` named in :data:`_FLAG_ATTRS`,
    ``setattr`` on such an object, a call of a setter in :data:`_FLAG_SETTERS`, or a
    ``torch.backends.*.flags(...)`` context."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and t.attr in _FLAG_ATTRS:
                found.append(f"line {node.lineno}: {ast.unparse(t)} = ...")
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in _FLAG_SETTERS or (name == "flags" and "backends" in ast.unparse(fn)):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
            elif name == "setattr" and node.args and "backends" in ast.unparse(node.args[0]):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_other_code_sets_the_process_wide_flags():
    """Only devices.numerics may touch them: a bare setting elsewhere would leak again."""
    offenders = []
    for f in PKG.rglob("*.py"):
        if f.name == "devices.py":
            continue
        offenders += [f"{f.relative_to(PKG)}: {w}" for w in flag_settings(f.read_text())]
    assert not offenders, offenders


@pytest.mark.parametrize("planted", [
    "torch.backends.cuda.matmul.allow_tf32=True",
    "torch.backends.cuda.matmul.allow_tf32 = True",
    "torch.backends.cudnn.allow_tf32 : bool = True",
    "torch.backends.cudnn.deterministic=False",
    "b = torch.backends.cudnn\nb.benchmark = True",
    "setattr(torch.backends.cudnn, 'deterministic', True)",
    "torch.set_float32_matmul_precision('high')",
    "torch.use_deterministic_algorithms(True)",
    "with torch.backends.cudnn.flags(enabled=True, deterministic=True):\n    pass",
])
def test_the_flag_finder_finds_every_spelling(planted):
    """The check above can fail: each way of setting a flag is found (the old substring check
    missed ``allow_tf32=True`` written without spaces)."""
    assert flag_settings("import torch\n" + planted + "\n"), planted
    assert not flag_settings("import torch\nx = torch.backends.cudnn.deterministic\n")


def test_device_choice():
    cfg = load_config(None, ["fastbci.device=cpu"])
    assert select_device(cfg) == torch.device("cpu")
    with pytest.raises(ConfigError, match="not a device"):
        select_device(load_config(None, ["fastbci.device=gpu0"]))
    assert select_device(cfg, local_rank=3) == torch.device("cpu")
