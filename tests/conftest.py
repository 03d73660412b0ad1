"""Test configuration: the Triton interpreter must be on before any kernel is defined."""
import os

import torch

if not torch.cuda.is_available():
    # CPU machines (CI) run the Triton kernels through the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_report_header(config):
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return [f"fastbci tests: torch {torch.__version__}, device {dev}, "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}"]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device of this machine. A test module that runs Triton kernels on the ``cpu`` param
    sets ``TRITON_KERNEL_TESTS = True``: on a GPU machine (no interpreter) its CPU cases skip,
    since the kernels are then tested on CUDA."""
    if (request.param == "cpu" and getattr(request.module, "TRITON_KERNEL_TESTS", False)
            and os.environ.get("TRITON_INTERPRET") != "1"):
        pytest.skip("Triton kernels run on CPU only under TRITON_INTERPRET=1; tested on CUDA here")
    return torch.device(request.param)
