"""Bad input to ``fastbci sweep``: a clear message and exit status 2 with nothing started or
created (an unknown key, a range the range table refuses, nothing to ablate, a malformed or
unreachable storage, a study that exists with another space, a folder that is not a sweep);
optuna missing: exit 5 naming the ``sweep`` extra."""
from __future__ import annotations

import sys

import pytest

from fastbci import fileio
from sweep_helpers import sweep, write_config, write_release


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("input")
    return write_config(root / "tiny.yaml", write_release(root / "data"))


def _space(tmp_path, text):
    f = tmp_path / "space.yaml"
    f.write_text(text)
    return f


def _refused(capsys, rc, out, *words):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not out.exists(), "nothing created"
    assert "Traceback" not in err
    for w in words:
        assert w in err, err
    return err


@pytest.mark.parametrize("text, words", [
    ("lr_maxx: {low: 0.001, high: 0.01}\n", ("unknown config key 'lr_maxx'", "lr_max")),
    ("dataset.batch_size: {low: 0, high: 8, int: true}\n", ("dataset.batch_size", "out of range",
                                                            ">= 1")),
    ("lr_max: {low: 0.01, high: 0.001}\n", ("low (0.01) must be below high",)),
    ("lr_max: {low: 0.0, high: 0.01, log: true}\n", ("log: true needs low > 0",)),
    ("dataset.batch_size: {low: 2.5, high: 8}\n", ("dataset.batch_size", "not an integer")),
    ("lr_max: {choices: [0.01, -1]}\n", ("lr_max", "-1", "out of range")),
])
def test_a_bad_space_is_refused_before_anything_starts(tiny, tmp_path, capsys, text, words):
    pytest.importorskip("optuna")
    out = tmp_path / "out"
    rc = sweep("search", tiny, "--space", _space(tmp_path, text), "--trials", 2, "--out", out)
    _refused(capsys, rc, out, *words)


@pytest.mark.parametrize("storage, words", [
    ("foo://bar", ("not a storage URL",)),
    ("postgresql://nobody@127.0.0.1:1/none", ("cannot open it",)),
    ("journal:/no/such/folder/j.log", ("does not exist",)),
])
def test_a_malformed_or_unreachable_storage_is_refused(tiny, tmp_path, capsys, storage, words):
    pytest.importorskip("optuna")
    if storage.startswith("postgresql"):
        pytest.importorskip("psycopg2", reason="no PostgreSQL driver installed")
    out = tmp_path / "out"
    rc = sweep("search", tiny, "--space", _space(tmp_path, "lr_max: {low: 0.001, high: 0.01}\n"),
               "--trials", 2, "--out", out, "--storage", storage)
    _refused(capsys, rc, out, *words)


def test_a_study_that_exists_with_another_space_is_refused(tiny, tmp_path, capsys):
    pytest.importorskip("optuna")
    out = tmp_path / "out"
    s1 = _space(tmp_path, "lr_max: {low: 0.001, high: 0.01}\n")
    assert sweep("search", tiny, "--space", s1, "--trials", 1, "--out", out, "--quiet") == 0
    capsys.readouterr()
    before = sorted(p.name for p in (out / "runs").iterdir())
    s2 = tmp_path / "other.yaml"
    s2.write_text("lr_max: {low: 0.001, high: 0.02}\n")
    rc = sweep("search", tiny, "--space", s2, "--trials", 2, "--out", out)
    err = capsys.readouterr().err
    assert rc == 2 and "exists" in err and "another search space" in err, err
    assert sorted(p.name for p in (out / "runs").iterdir()) == before, "no trial started"


def test_ablate_refuses_nothing_to_ablate_and_bad_keys(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    rc = sweep("ablate", tiny, "--against", tiny, "--out", out)
    _refused(capsys, rc, out, "nothing to ablate")
    rc = sweep("ablate", tiny, "--against", tiny, "--out", out, "seed=3")
    _refused(capsys, rc, out, "nothing to ablate")  # an override applies to both
    ref = tmp_path / "ref.yaml"
    ref.write_text(tiny.read_text().replace("lr_max: 0.02", "lr_max: 0.005"))
    rc = sweep("ablate", tiny, "--against", ref, "--out", out, "lr_maxx=1")
    _refused(capsys, rc, out, "unknown config key 'lr_maxx'")
    rc = sweep("ablate", tiny, "--against", ref, "--out", out, "lr_max=-1")
    _refused(capsys, rc, out, "lr_max", "out of range")
    rc = sweep("ablate", tiny, "--against", ref, "--out", out, "--keys", "weight_decay")
    _refused(capsys, rc, out, "--keys weight_decay", "does not differ", "lr_max")
    rc = sweep("ablate", tiny, "--against", ref, "--out", out, "--group", "lr=lr_maxx")
    _refused(capsys, rc, out, "unknown config key 'lr_maxx'")
    rc = sweep("ablate", tiny, "--against", ref, "--out", out, "--group", "x=weight_decay")
    _refused(capsys, rc, out, "group x", "differs")


def test_a_folder_that_is_not_a_sweep_of_this_kind_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    ref = tmp_path / "ref.yaml"
    ref.write_text(tiny.read_text().replace("lr_max: 0.02", "lr_max: 0.005"))
    rc = sweep("ablate", tiny, "--against", ref, "--out", out)
    err = capsys.readouterr().err
    assert rc == 2 and "1 file(s) that fastbci did not write" in err and "notes.txt" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    fileio.atomic_write_text(seeds / "sweep.json", '{"kind": "seeds", "signature": "x"}')
    rc = sweep("ablate", tiny, "--against", ref, "--out", seeds)
    err = capsys.readouterr().err
    assert rc == 2 and "another kind (seeds, not ablation)" in err, err


def test_a_count_outside_its_range_is_an_argparse_error(tiny, tmp_path, capsys):
    assert sweep("seeds", tiny, "--seeds", 0, "--out", tmp_path / "o") == 2
    assert "--seeds: 0 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_optuna_missing_is_exit_5_naming_the_extra(tiny, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "optuna" or m.startswith("optuna.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    out = tmp_path / "out"
    rc = sweep("search", tiny, "--space", _space(tmp_path, "lr_max: {low: 0.001, high: 0.01}\n"),
               "--trials", 2, "--out", out)
    err = capsys.readouterr().err
    assert rc == 5 and "pip install 'fastbci[sweep]'" in err, err
    assert not out.exists()
