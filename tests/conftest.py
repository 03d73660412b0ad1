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


@pytest.fixture(scope="session")
def synth_release(tmp_path_factory):
    """``synth_release(seed=0, preset="small")``: a synthetic release, written once per session
    for each (preset, seed) and shared by every test that asks for it (read-only: a test that
    changes files copies it first)."""
    from fastbci import synth
    made = {}

    def make(seed: int = 0, preset: str = "small"):
        if (preset, seed) not in made:
            d = tmp_path_factory.mktemp(f"{preset}_release_seed{seed}")
            synth.write_release(d, **synth.PRESETS[preset], seed=seed)
            made[preset, seed] = d
        return made[preset, seed]
    return make


@pytest.fixture(scope="session")
def small_release(synth_release):
    """The small synthetic release (3 sessions, one train-only; 32 features), seed 2."""
    return synth_release(seed=2)


@pytest.fixture(scope="session")
def tiny_checkpoint(small_release, tmp_path_factory):
    """A tiny model trained 2 batches on ``small_release``: its best checkpoint's path."""
    from helpers import make_cfg

    from fastbci.training import Trainer
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    res = Trainer(make_cfg(small_release, out, "num_training_batches=2", "batches_per_val_step=1"),
                  console=False).fit()
    assert res.status == "finished"
    return out / "checkpoint" / "best_checkpoint"
