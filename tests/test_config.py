"""The configuration: every official value, overrides, type checks, unknown keys."""
from pathlib import Path

import pytest
import yaml

from fastbci import config
from fastbci.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent

# docs/recipe.md section 7, transcribed key by key (independently of configs/official.yaml).
OFFICIAL = {
    "model.n_input_features": 512, "model.n_units": 768, "model.rnn_dropout": 0.4,
    "model.rnn_trainable": True, "model.n_layers": 5, "model.patch_size": 14,
    "model.patch_stride": 4, "model.input_network.n_input_layers": 1,
    "model.input_network.input_layer_sizes": [512], "model.input_network.input_trainable": True,
    "model.input_network.input_layer_dropout": 0.2,
    "gpu_number": "1", "mode": "train", "use_amp": True,
    "output_dir": "trained_models/baseline_rnn",
    "checkpoint_dir": "trained_models/baseline_rnn/checkpoint",
    "init_from_checkpoint": False, "init_checkpoint_path": "None", "save_best_checkpoint": True,
    "save_all_val_steps": False, "save_final_model": False, "save_val_metrics": True,
    "early_stopping": False, "early_stopping_val_steps": 20, "num_training_batches": 120000,
    "lr_scheduler_type": "cosine", "lr_max": 0.005, "lr_min": 0.0001, "lr_decay_steps": 120000,
    "lr_warmup_steps": 1000, "lr_max_day": 0.005, "lr_min_day": 0.0001,
    "lr_decay_steps_day": 120000, "lr_warmup_steps_day": 1000, "beta0": 0.9, "beta1": 0.999,
    "epsilon": 0.1, "weight_decay": 0.001, "weight_decay_day": 0, "seed": 10,
    "grad_norm_clip_value": 10, "batches_per_train_log": 200, "batches_per_val_step": 2000,
    "batches_per_save": 0, "log_individual_day_val_PER": True, "log_val_skip_logs": False,
    "save_val_logits": True, "save_val_data": False,
    "dataset.data_transforms.white_noise_std": 1.0,
    "dataset.data_transforms.constant_offset_std": 0.2,
    "dataset.data_transforms.random_walk_std": 0.0,
    "dataset.data_transforms.random_walk_axis": -1,
    "dataset.data_transforms.static_gain_std": 0.0, "dataset.data_transforms.random_cut": 3,
    "dataset.data_transforms.smooth_kernel_size": 100,
    "dataset.data_transforms.smooth_data": True, "dataset.data_transforms.smooth_kernel_std": 2,
    "dataset.neural_dim": 512, "dataset.batch_size": 64, "dataset.n_classes": 41,
    "dataset.max_seq_elements": 500, "dataset.days_per_batch": 4, "dataset.seed": 1,
    "dataset.num_dataloader_workers": 4, "dataset.loader_shuffle": False,
    "dataset.must_include_days": None, "dataset.test_percentage": 0.1,
    "dataset.feature_subset": None, "dataset.dataset_dir": "../data/hdf5_data_final",
    "dataset.bad_trials_dict": None,
}
SESSIONS = (
    ["t15.2023." + d for d in "08.11 08.13 08.18 08.20 08.25 08.27 09.01 09.03 09.24 09.29 10.01 "
     "10.06 10.08 10.13 10.15 10.20 10.22 11.03 11.04 11.17 11.19 11.26 12.03 12.08 12.10 12.17 "
     "12.29".split()]
    + ["t15.2024." + d for d in "02.25 03.03 03.08 03.15 03.17 04.25 04.28 05.10 06.14 07.19 "
       "07.21 07.28".split()]
    + ["t15.2025." + d for d in "01.10 01.12 03.14 03.16 03.30 04.13".split()]
)


def test_every_official_value():
    cfg = load_config(ROOT / "configs" / "official.yaml")
    for key, value in OFFICIAL.items():
        got = config.get(cfg, key)
        assert got == value and type(got) is type(value), f"{key}: {got!r} != official {value!r}"
    assert cfg["dataset"]["sessions"] == SESSIONS
    assert len(SESSIONS) == 45
    pval = cfg["dataset"]["dataset_probability_val"]
    assert [i for i, p in enumerate(pval) if p == 0] == [0, 28, 32, 33]
    assert len(pval) == 45 and set(pval) == {0, 1}


def test_official_file_equals_builtin_defaults():
    with open(ROOT / "configs" / "official.yaml") as f:
        assert yaml.safe_load(f) == config.defaults()
    assert "fastbci" not in config.official()
    assert config.diff_from_official(load_config()) == {}


def test_official_rnn_args_without_fastbci_section_loads_unchanged(tmp_path):
    off = config.official()
    p = tmp_path / "rnn_args.yaml"
    p.write_text(yaml.safe_dump(off))
    cfg = load_config(p)
    assert config.diff_from_official(cfg) == {}
    assert cfg["fastbci"] == config.defaults()["fastbci"]


def test_overrides_and_types():
    cfg = load_config(None, ["dataset.batch_size=48", "lr_max=2e-3", "fastbci.impl=reference",
                             "dataset.must_include_days=[1, 2]", "use_amp=false"])
    assert cfg["dataset"]["batch_size"] == 48
    assert cfg["lr_max"] == 0.002
    assert cfg["fastbci"]["impl"] == "reference"
    assert cfg["dataset"]["must_include_days"] == [1, 2]
    assert cfg["use_amp"] is False
    assert config.diff_from_official(cfg)["dataset.batch_size"] == (48, 64)


@pytest.mark.parametrize("override,needle", [
    ("dataset.batch_sise=3", "did you mean 'dataset.batch_size'"),
    ("batch_size=3", "did you mean 'dataset.batch_size'"),
    ("white_noise=0.5", "dataset.data_transforms.white_noise_std"),
    ("lr_mx=0.1", "did you mean 'lr_max'"),
])
def test_unknown_key_names_nearest(override, needle):
    with pytest.raises(ConfigError, match="unknown config key") as e:
        load_config(None, [override])
    assert needle in str(e.value)


@pytest.mark.parametrize("override,needle", [
    ("dataset.batch_size=forty", "is not an integer"),
    ("lr_max=[1]", "is not a number"),
    ("use_amp=3", "true or false"),
    ("fastbci.impl=gpu", "one of"),
    ("dataset.sessions=t15", "list"),
    ("novalue", "key=value"),
])
def test_bad_values_are_named(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("dataset:\n  batch_sizee: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'dataset.batch_sizee' in .*c.yaml"):
        load_config(p)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


@pytest.mark.parametrize("override,needle", [
    ("dataset.dataset_probability_val=[1]", "dataset_probability_val' has 1 entries"),
    ("dataset.days_per_batch=0", "days_per_batch"),
    ("dataset.must_include_days=[50]", r"'dataset.must_include_days\[0\]': 50 is out of range"),
    ("model.n_input_features=256", "differs from"),
    ("dataset.data_transforms.white_noise_std=-1", ">= 0"),
    ("model.rnn_dropout=1.5", r"\[0, 1\)"),
])
def test_cross_key_validation(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])
