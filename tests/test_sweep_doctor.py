"""The doctor's collapse advice ends with the ablation that tests it, and that command runs as
written (CONFIG replaced by a configuration with the collapse recipe's weaker augmentation and
learning rate; a few batches, to check the command, not the diagnosis)."""
import csv
import shlex

from fastbci import doctor
from sweep_helpers import sweep, write_config, write_release

WEAK = {"dataset": {"data_transforms": {"white_noise_std": 0.25, "constant_offset_std": 0.05}},
        "lr_max": 0.002, "lr_max_day": 0.02}


def test_the_collapse_advice_ends_with_a_working_ablate_command(tmp_path, capsys):
    head, _, command = doctor.COLLAPSE_WHY.rpartition(": fastbci sweep ")
    assert head and command.startswith("ablate CONFIG") and doctor.COLLAPSE_WHY.endswith(command)
    cfg = write_config(tmp_path / "weak.yaml", write_release(tmp_path / "data"), WEAK)
    argv = [str(cfg) if w == "CONFIG" else w for w in shlex.split(command)]
    argv = [str(tmp_path / w) if prev == "--out" else w for prev, w in zip([""] + argv, argv)]
    rc = sweep(*argv, "--quiet", "num_training_batches=4", "batches_per_val_step=2",
               "--seed-list", "1")
    assert rc == 0, capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "ablation" / "ablation.csv").open()))
    # two factors: break-augmentation is fix-lr_max and break-lr_max is fix-augmentation
    assert [r["variant"] for r in rows] == ["config", "ref", "fix-augmentation", "fix-lr_max"]
    ref = next(r for r in rows if r["variant"] == "ref")
    assert ref["values"] == ("dataset.data_transforms.white_noise_std=1.0 "
                             "dataset.data_transforms.constant_offset_std=0.2 lr_max=0.005")


def test_the_demo_collapse_config_is_the_demo_weakened_with_the_collapse_recipe():
    """configs/demo-collapse.yaml (README, "Test a diagnosis") differs from configs/demo.yaml in
    the collapse recipe's augmentation and learning rate, the official output-layer
    initialisation, and its output folder, only; an ablation of the two has three factors."""
    from pathlib import Path

    from fastbci.config import flatten, load_config
    root = Path(__file__).resolve().parent.parent / "configs"
    a, b = (flatten(load_config(root / n)) for n in ("demo.yaml", "demo-collapse.yaml"))
    assert {k: (a[k], b[k]) for k in a if a[k] != b[k]} == {
        "output_dir": ("trained_models/demo", "trained_models/demo-collapse"),
        "checkpoint_dir": ("trained_models/demo/checkpoint",
                           "trained_models/demo-collapse/checkpoint"),
        "lr_max": (0.02, 0.002), "dataset.data_transforms.white_noise_std": (1.0, 0.25),
        "dataset.data_transforms.constant_offset_std": (0.2, 0.05),
        "fastbci.init_blank_bias": (3.0, None)}
    from fastbci.sweep import plan
    ca, cb = (load_config(root / n) for n in ("demo-collapse.yaml", "demo.yaml"))
    assert sorted(k for k, f in plan.differing_keys(ca, cb).items() if f) == [
        "dataset.data_transforms.constant_offset_std", "dataset.data_transforms.white_noise_std",
        "fastbci.init_blank_bias", "lr_max"]
