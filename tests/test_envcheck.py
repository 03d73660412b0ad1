"""``python -m fastbci.doctor --env``: compiles the official patching and says whether this
torch computes its day-layer gradients correctly (issue #22, item 14)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fastbci import commands, envcheck


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times 1.5: a planted wrong backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return 1.5 * g


def _planted(model):
    return lambda x, day_idx: _ScaleGrad.apply(model(x, day_idx))


def test_a_planted_wrong_gradient_is_affected():
    r = envcheck.probe(device="cpu", compile_fn=_planted)
    assert r.affected
    name, worst = r.worst
    assert name.startswith("day_") and worst > 1.0
    text = envcheck.report(r)
    assert "this torch is AFFECTED" in text and f"off by {worst:.3g}" in text
    assert "fastbci.compat.GRUDecoder" in text and "2.11.0" in text


def test_eager_against_eager_is_not_affected():
    r = envcheck.probe(device="cpu", compile_fn=lambda model: model)
    assert not r.affected and r.worst[1] == 0.0
    assert set(r.differences) == {"day_weights.0", "day_weights.1", "day_biases.0", "day_biases.1"}
    assert "this torch is not affected" in envcheck.report(r)


def test_the_probe_is_the_official_patching():
    """The probe's model is the official forward up to the GRU: per trial its day's matrix and
    bias, softsign, then windows of 14 steps every 4, flattened time-major."""
    m = envcheck.OfficialPatching()
    x = torch.randn(2, 30, 8)
    got = m(x, [1, 0])
    y = torch.nn.functional.softsign(torch.stack([x[0] @ m.day_weights[1] + m.day_biases[1],
                                                  x[1] @ m.day_weights[0] + m.day_biases[0]]))
    want = torch.stack([torch.cat([y[:, 4 * p + k] for k in range(14)], dim=-1)
                        for p in range((30 - 14) // 4 + 1)], dim=1)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("affected,code", [(True, 1), (False, 0)])
def test_the_exit_status_is_the_verdict(monkeypatch, capsys, affected, code):
    planted = _planted if affected else (lambda model: model)
    real = envcheck.probe
    monkeypatch.setattr(envcheck, "probe", lambda backend: real(device="cpu", compile_fn=planted))
    assert commands.main(["doctor", "--env"]) == code
    out = capsys.readouterr().out
    assert out.startswith("fastbci doctor --env: torch ")
    assert ("AFFECTED" in out) == affected


def test_a_compiler_that_cannot_run_exits_2(monkeypatch, capsys):
    def broken(model):
        raise RuntimeError("no C++ compiler found\nmore")

    real = envcheck.probe
    monkeypatch.setattr(envcheck, "probe", lambda backend: real(device="cpu", compile_fn=broken))
    assert commands.main(["doctor", "--env"]) == 2
    err = capsys.readouterr().err
    assert "the probe could not run: RuntimeError: no C++ compiler found" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_this_torch_gets_the_measured_verdict():
    """The real command (torch.compile with inductor): on a measured torch, the measured
    verdict, as the exit status and in words."""
    version = torch.__version__.split("+")[0]
    if version not in envcheck.MEASURED:
        pytest.skip(f"no measurement of torch {version} (measured: {sorted(envcheck.MEASURED)})")
    affected = envcheck.MEASURED[version][0]
    proc = subprocess.run([sys.executable, "-m", "fastbci.doctor", "--env"], capture_output=True,
                          text=True, timeout=600)
    print(proc.stdout)
    assert proc.returncode == (1 if affected else 0), proc.stdout + proc.stderr[-2000:]
    verdict = "this torch is AFFECTED" if affected else "this torch is not affected"
    assert verdict in proc.stdout and f"torch {torch.__version__}" in proc.stdout
    assert "backend inductor" in proc.stdout
