"""Every numeric configuration key has a range, in one table (fastbci.ranges) that the errors
and docs/configuration.md both use; every value out of its range is refused before any data is
read or any folder created, with exit status 2 and a message naming the key, the value and what
is allowed (issue #22, items 2, 4-7, 9 and the sweep)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastbci import commands, config, ranges
from fastbci.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL = ROOT / "configs" / "official.yaml"
DOC = ROOT / "docs" / "configuration.md"


def _numeric_keys() -> list[str]:
    """The schema's numeric keys (numbers, integers, lists of them, the GPU index)."""
    def numeric(spec) -> bool:
        if isinstance(spec, tuple):
            return spec[0] == "str-or-int" or (spec[0] in ("list", "optional") and numeric(spec[1]))
        return spec in ("int", "number")
    return sorted(k for k, s in config._schema().items() if numeric(s))


def test_every_numeric_key_has_exactly_one_range():
    keys = _numeric_keys()
    assert "num_training_batches" in keys and "fastbci.checkpoint_every" in keys
    assert sorted(ranges.RANGES) == keys
    for rule in ranges.RULES:
        assert set(rule.keys) <= set(config._schema()), rule.keys
    for keys_of_rule, _, _ in ranges.DATA_RULES:
        assert set(keys_of_rule) <= set(config._schema()), keys_of_rule


def test_the_doc_table_is_the_code_table():
    """docs/configuration.md holds exactly what ``python -m fastbci.ranges`` prints."""
    text = DOC.read_text()
    begin, end = text.index(ranges.BEGIN_MARK), text.index(ranges.END_MARK) + len(ranges.END_MARK)
    assert text[begin:end] == ranges.markdown(), (
        "docs/configuration.md is out of date: regenerate its table with python -m fastbci.ranges")
    for key in ranges.RANGES:
        assert f"| `{key}` | {ranges.RANGES[key].allowed()}" in text or \
            f"| `{key}` | each: " in text, key


def test_the_doc_check_can_fail(monkeypatch):
    monkeypatch.setitem(ranges.RANGES, "dataset.batch_size", ranges.Range(2, None, "changed"))
    assert ranges.markdown() not in DOC.read_text()


def test_the_step_limit_is_the_philox_counter():
    from fastbci import philox
    assert ranges.MAX_BATCHES == philox.MAX_STEP + 1


@pytest.mark.parametrize("r,inside,outside,words", [
    (ranges.Range(1, None, ""), [1, 10 ** 30], [0, -1, float("nan"), float("inf")], ">= 1"),
    (ranges.Range(0, 1, "", hi_open=True), [0, 0.5], [1, 1.0, -0.1], "in [0, 1)"),
    (ranges.Range(0, None, "", lo_open=True), [1e-9], [0, 0.0], "> 0"),
    (ranges.Range(-1, 2 ** 32 - 1, ""), [-1, 0, 2 ** 32 - 1], [-2, 2 ** 32], "-1 to 4294967295"),
    (ranges.Range(0, 1, "", values=(0, 1)), [0, 1, 1.0], [0.5, 2, -1], "0 or 1"),
    (ranges.Range(1, 1, ""), [1], [0, 2], "exactly 1"),
])
def test_range_membership_and_words(r, inside, outside, words):
    assert all(r.contains(v) for v in inside), inside
    assert not any(r.contains(v) for v in outside), outside
    assert r.allowed() == words


# -- the sweep: one value out of range per numeric key, through the trainer's command line -------
def _list_value(key: str, bad):
    """A list for ``key`` whose first element is ``bad`` (the rest official)."""
    official = config.get(config.defaults(), key) or [0]
    return [bad] + list(official[1:])


def _bad_values(key: str) -> list:
    """Values of the right type just outside ``key``'s range (below and above where bounded)."""
    r = ranges.RANGES[key]
    spec = config._schema()[key]
    while isinstance(spec, tuple) and spec[0] in ("list", "optional"):
        spec = spec[1]
    integer = r.index or spec == "int"
    out = []
    if r.values is not None:
        out.append(0.5)
    if r.lo is not None and r.values is None:
        out.append(r.lo if r.lo_open else (r.lo - 1 if integer else r.lo - 0.5))
    if r.hi is not None and r.values is None:
        out.append(r.hi if r.hi_open else (r.hi + 1 if integer else r.hi + 0.5))
    if key == "dataset.must_include_days":  # bounded by the number of sessions (a rule)
        out.append(45)
    if integer and r.hi is None and not r.each:
        out.append(2 ** 63)  # beyond int64
    return [_list_value(key, v) if r.each else v for v in out]


SWEEP = [(key, value) for key in sorted(ranges.RANGES) for value in _bad_values(key)]
#: the rules over several keys, each broken once (official configuration otherwise)
RULE_CASES = [
    ("dataset.sessions", "dataset.sessions=[]"),
    ("dataset.dataset_probability_val", "dataset.dataset_probability_val=[1]"),
    ("dataset.days_per_batch", "dataset.days_per_batch=46"),
    ("dataset.must_include_days", "dataset.must_include_days=[0,1,2,3,4]"),
    ("model.n_input_features", "model.n_input_features=256"),
    ("dataset.feature_subset", "dataset.feature_subset=[0,1]"),
    ("model.input_network.input_layer_sizes", "model.input_network.input_layer_sizes=[256]"),
    ("model.patch_stride", "model.patch_stride=0"),
    ("lr_min", "lr_min=0.01"),
    ("lr_min_day", "lr_min_day=0.01"),
]


def test_the_sweep_covers_every_numeric_key():
    assert {k for k, _ in SWEEP} == set(_numeric_keys())
    assert len(SWEEP) >= 2 * len(_numeric_keys()) - 20


def test_every_out_of_range_value_exits_2_naming_the_key_before_anything_is_touched(tmp_path,
                                                                                      capsys):
    """The trainer's command line, in process, once per value: exit 2 (never 0, never 1), the
    key named on stderr, no traceback, and no output folder or data read."""
    out, data = tmp_path / "run", tmp_path / "no-data"
    common = [f"output_dir={out}", f"checkpoint_dir={out}/checkpoint", f"dataset.dataset_dir={data}"]
    cases = [(key, f"{key}={_yaml(value)}") for key, value in SWEEP] + RULE_CASES
    failures = []
    for key, override in cases:
        code = commands.main(["train", str(OFFICIAL), *common, override])
        err = capsys.readouterr().err
        if code != 2 or f"'{key}" not in err or "Traceback" in err or "configuration error" not in err:
            failures.append(f"{override}: exit {code}, stderr {err.strip()[:300]!r}")
    assert not failures, "\n".join(failures)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the sweep created files"


def _yaml(value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_yaml(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def test_the_real_command_exits_2(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for override, key in (("num_training_batches=99999999999999999999", "num_training_batches"),
                          ("dataset.dataset_probability_val=[2,-1,0]",
                           "dataset.dataset_probability_val[0]")):
        proc = subprocess.run([sys.executable, "-m", "fastbci.train", str(OFFICIAL), override,
                               f"output_dir={tmp_path}/out"], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)
        assert proc.returncode == 2, (override, proc.returncode, proc.stderr[-1000:])
        assert f"config key '{key}'" in proc.stderr and "out of range" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# -- the cases, one by one --------------------------------------------------------------
@pytest.mark.parametrize("overrides,key,allowed", [
    # 4: counts where 0 means nothing
    (["batches_per_val_step=0"], "batches_per_val_step", ">= 1"),
    (["batches_per_train_log=0"], "batches_per_train_log", ">= 1"),
    (["fastbci.checkpoint_every=-1"], "fastbci.checkpoint_every", ">= 0"),
    # 5: a patience of -1 stopped training at batch 0
    (["early_stopping=true", "early_stopping_val_steps=-1"], "early_stopping_val_steps", ">= 1"),
    # 6: -1 was taken as "validate", 2 too; a fraction is not a probability either
    (["dataset.dataset_probability_val=[2,-1,0]"], "dataset.dataset_probability_val[0]", "0 or 1"),
    (["dataset.dataset_probability_val=" + str([1] * 44 + [-1]).replace(" ", "")],
     "dataset.dataset_probability_val[44]", "0 or 1"),
    (["dataset.dataset_probability_val=" + str([1] * 44 + [0.5]).replace(" ", "")],
     "dataset.dataset_probability_val[44]", "0 or 1"),
    # 7: n_classes=0 was blamed on the data
    (["dataset.n_classes=0"], "dataset.n_classes", ">= 2"),
    (["dataset.n_classes=1"], "dataset.n_classes", ">= 2"),
    # 9: model sizes refused only after the data loaded, as "GRUDecoder: n_units"
    (["model.n_units=0"], "model.n_units", ">= 1"),
    (["model.n_layers=0"], "model.n_layers", ">= 1"),
    # 2: beyond what the step counter (and int64) can address
    (["num_training_batches=1000000000"], "num_training_batches", "1 to 536870912"),
    (["num_training_batches=99999999999999999999"], "num_training_batches", "1 to 536870912"),
    # a few more of the same kind
    (["seed=-2"], "seed", "-1 to 4294967295"),
    (["gpu_number=-1"], "gpu_number", ">= 0"),
    (["dataset.data_transforms.smooth_kernel_std=0"], "dataset.data_transforms.smooth_kernel_std",
     "> 0"),
])
def test_each_reported_value_is_refused_with_key_value_and_range(overrides, key, allowed):
    with pytest.raises(ConfigError) as e:
        load_config(OFFICIAL, overrides)
    msg = str(e.value)
    assert msg.startswith(f"config key '{key}': "), msg
    assert "is out of range" in msg and f"(allowed: {allowed}" in msg, msg


def test_a_gpu_number_that_is_not_a_number_is_named():
    with pytest.raises(ConfigError, match=r"'gpu_number': 'abc' is not an integer index"):
        load_config(None, ["gpu_number=abc"])
    assert load_config(None, ["gpu_number=0"])["gpu_number"] == 0


def test_the_bundled_configurations_are_in_range():
    for path in (OFFICIAL, ROOT / "configs" / "demo.yaml"):
        load_config(path)
    for bounds in (["num_training_batches=536870912"], ["seed=-1", "dataset.seed=4294967295"],
                   ["dataset.dataset_probability_val=" + str([1.0] * 45).replace(" ", "")],
                   ["fastbci.checkpoint_every=0", "dataset.data_transforms.random_cut=0"],
                   ["model.patch_size=0", "model.patch_stride=0"], ["beta1=0", "lr_min=0.005"],
                   ["dataset.days_per_batch=45", "dataset.must_include_days=[-45,44]"]):
        load_config(OFFICIAL, bounds)
