"""fastbci.doctor: configuration diff against the official recipe, severities, exit codes."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fastbci.config import _official_path, load_config
from fastbci.commands import main as fastbci
from fastbci.doctor import SEVERE, WARNING, INFO, Finding, assess, format_findings

WEAK = {  # docs/recipe.md section 8: reported to collapse to all-blank
    "dataset.data_transforms.white_noise_std": 0.25,
    "dataset.data_transforms.constant_offset_std": 0.05,
    "lr_max": 0.002,
    "lr_warmup_steps": 2000,
    "dataset.batch_size": 48,
}


@pytest.fixture
def weak_yaml(tmp_path):
    p = tmp_path / "weak.yaml"
    p.write_text("lr_max: 0.002\nlr_warmup_steps: 2000\nepsilon: 0.1\n"
                 "dataset:\n  batch_size: 48\n  data_transforms:\n"
                 "    white_noise_std: 0.25\n    constant_offset_std: 0.05\n")
    return p


def test_official_has_no_findings(capsys, tmp_path):
    assert assess(load_config(None)) == []
    assert fastbci(["doctor", str(_official_path())]) == 0
    assert "No difference from the official configuration" in capsys.readouterr().out
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert fastbci(["doctor", str(empty)]) == 0


def test_weak_config_is_severe(weak_yaml, capsys):
    findings = assess(load_config(weak_yaml))
    assert {f.key for f in findings} == set(WEAK), [f.key for f in findings]
    by_key = {f.key: f for f in findings}
    for key in ("dataset.data_transforms.white_noise_std",
                "dataset.data_transforms.constant_offset_std", "lr_max"):
        assert by_key[key].severity == SEVERE, f"{key} should be severe: {by_key[key]}"
        assert "blank" in by_key[key].impact
    for key in ("lr_warmup_steps", "dataset.batch_size"):
        assert by_key[key].severity == WARNING and "all-blank" in by_key[key].impact
    assert all(by_key[k].value == v for k, v in WEAK.items())
    assert by_key["lr_max"].official == 0.005
    # most severe first, in the order of the known risks
    assert [f.key for f in findings] == [
        "dataset.data_transforms.white_noise_std", "dataset.data_transforms.constant_offset_std",
        "lr_max", "lr_warmup_steps", "dataset.batch_size"]
    assert fastbci(["doctor", str(weak_yaml)]) == 1
    out = capsys.readouterr().out
    for key in WEAK:
        assert key in out, f"{key} missing from the table"
    assert "3 severe, 2 warning(s), 0 info" in out


@pytest.mark.parametrize("eps,severity,text", [(1e-8, SEVERE, "NaN"), (1e-3, SEVERE, "NaN"),
                                               (0.05, WARNING, "smaller"),
                                               (0.5, WARNING, "larger"), (100.0, WARNING, "far above")])
def test_epsilon(eps, severity, text):
    (f,) = assess(load_config(None, [f"epsilon={eps}"]))
    assert f.key == "epsilon" and f.severity == severity and text in f.impact


@pytest.mark.parametrize("override,severity", [
    ("dataset.data_transforms.white_noise_std=2.0", WARNING),
    ("lr_max=0.01", WARNING),
    ("num_training_batches=10000", WARNING),
    ("model.n_units=512", WARNING),
    ("grad_norm_clip_value=0", WARNING),
    ("seed=3", INFO),
    ("output_dir=runs/x", INFO),
    ("dataset.data_transforms.random_walk_std=0.1", WARNING),
])
def test_other_keys(override, severity):
    (f,) = assess(load_config(None, [override]))
    assert f.key == override.split("=")[0] and f.severity == severity, f
    assert f.impact


def test_severity_order_and_overrides(capsys):
    cfg = load_config(None, ["seed=3", "epsilon=1e-8", "lr_warmup_steps=500"])
    sev = [f.severity for f in assess(cfg)]
    assert sev == [SEVERE, WARNING, INFO]
    assert fastbci(["doctor", str(_official_path()), "epsilon=1e-8"]) == 1
    assert fastbci(["doctor", str(_official_path()), "seed=3"]) == 0
    capsys.readouterr()


def test_unknown_key_exit_2(capsys, tmp_path):
    assert fastbci(["doctor", str(_official_path()), "lr_maxx=0.1"]) == 2
    err = capsys.readouterr().err
    assert "lr_maxx" in err and "did you mean 'lr_max'" in err and "Traceback" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  batch_sise: 48\n")
    assert fastbci(["doctor", str(bad)]) == 2
    assert "dataset.batch_size" in capsys.readouterr().err
    assert fastbci(["doctor", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert fastbci(["doctor", str(_official_path()), "dataset.batch_size=forty"]) == 2
    assert "dataset.batch_size" in capsys.readouterr().err


def test_keys_listing(capsys):
    assert fastbci(["doctor", "--keys"]) == 0
    out = capsys.readouterr().out
    assert "lr_max  (official: 0.005)" in out and "dataset.data_transforms.white_noise_std" in out
    assert "fastbci.rng" in out


def test_cli_module_subprocess(weak_yaml):
    r = subprocess.run([sys.executable, "-m", "fastbci.doctor", str(weak_yaml), "lr_maxx=1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "did you mean 'lr_max'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "fastbci.doctor", str(weak_yaml)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "white_noise_std" in r.stdout


def test_format_findings_long_values():
    f = Finding("dataset.sessions", ["a"] * 10, ["b"] * 45, WARNING, "different data")
    text = format_findings([f])
    assert "[10 items" in text and "[45 items" in text and "0 severe, 1 warning(s), 0 info" in text
