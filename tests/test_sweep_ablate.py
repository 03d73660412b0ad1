"""``fastbci sweep ablate`` and ``fastbci sweep seeds`` on a tiny synthetic release.

The configuration differs from its reference in two factors: peak learning rates 500x lower
(``lr_max`` and ``lr_max_day``, one factor with ``--group``; they keep the run on the blank
plateau for the whole budget) and no weight decay (harmless here). A tiny GRU on 12
validation trials learns its first phonemes within a CPU test's budget (validation PER
0.63-0.70 after 10 batches at seeds 2 and 3) but not down to 0.5, so these tests call a run's
PER below 0.75 "left the plateau" (``--plateau-per 0.75``); with the low learning rates the PER
stays above 1."""
from __future__ import annotations

import csv
import json

import pytest

from sweep_helpers import LEARN, LEARN_RELEASE, sweep, write_config, write_release

SLOW_LR = {"lr_max": 1.0e-4, "lr_max_day": 1.0e-4, "weight_decay": 0.0}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    rel = write_release(root / "data", **LEARN_RELEASE)
    return (write_config(root / "slow.yaml", rel, LEARN, SLOW_LR),
            write_config(root / "ref.yaml", rel, LEARN), root)


@pytest.fixture(scope="module")
def ablation(files):
    cfg, ref, root = files
    out = root / "out"
    rc = sweep("ablate", cfg, "--against", ref, "--out", out, "--seed-list", "2,3",
               "--plateau-per", "0.75", "--group", "lr=lr_max,lr_max_day", "--quiet")
    return rc, out


def rows(path):
    return list(csv.DictReader(path.open()))


def test_rows_statuses_and_verdict(ablation, capsys):
    rc, out = ablation
    assert rc == 0
    r = rows(out / "ablation.csv")
    # with two factors, break-lr_max is fix-weight_decay and break-weight_decay is fix-lr:
    # each configuration runs once
    assert [(x["variant"], x["seed"]) for x in r] == [
        (v, s) for v in ("config", "ref", "fix-lr", "fix-weight_decay") for s in ("2", "3")]
    by = {(x["variant"], x["seed"]): x for x in r}
    for s in ("2", "3"):
        assert by[("config", s)]["values"] == "lr_max=0.0001 lr_max_day=0.0001 weight_decay=0.0"
        assert by[("fix-lr", s)]["values"] == "lr_max=0.05 lr_max_day=0.05 weight_decay=0.0"
        assert by[("fix-lr", s)]["factor"] == "lr"
        assert by[("fix-lr", s)]["keys"] == "lr_max lr_max_day"
        assert by[("fix-lr", s)]["direction"] == "fix"
        for v in ("ref", "fix-lr"):
            assert by[(v, s)]["status"] == "finished" and by[(v, s)]["left_plateau_batch"] == "10"
            assert float(by[(v, s)]["final_per"]) < 0.75
        for v in ("config", "fix-weight_decay"):
            assert by[(v, s)]["status"] in ("finished", "collapsed")
            assert by[(v, s)]["left_plateau_batch"] == "" and float(by[(v, s)]["best_per"]) > 1.0
    for x in r:
        assert float(x["seconds"]) > 0 and x["final_per"] and x["best_per"]
        run = out / "runs" / f"{x['variant']}-s{x['seed']}"
        for name in ("train.log", "metrics.jsonl", "run_status.json", "args.yaml",
                     "checkpoint/resume_checkpoint"):
            assert (run / name).is_file(), f"{run.name}: no {name}"
    md = (out / "ablation.md").read_text()
    assert md.count("\n| ") == 6, "a header, its rule and one row per variant"
    assert "| fix-lr | lr_max=0.05 lr_max_day=0.05 weight_decay=0.0 | 2 |" in md
    verdict = md.split("collapse watch stopped.", 1)[1]
    assert ("CONFIG did not learn (never left the blank plateau, or collapsed); REF learned "
            "(left the blank plateau) (over 2 seed(s))." in verdict)
    assert ("Alone, these turn learning into collapse (REF with CONFIG's value): lr "
            "(lr_max = 0.0001, lr_max_day = 0.0001)." in verdict)
    assert ("Alone, these turn collapse into learning (CONFIG with REF's value): lr "
            "(lr_max = 0.05, lr_max_day = 0.05)." in verdict)
    assert "weight_decay" not in verdict
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_skips_ended_runs_and_resumes_an_unfinished_one(ablation, files, capsys):
    rc, out = ablation
    cfg, ref, _ = files
    (out / "runs" / "ref-s3" / "run_status.json").unlink()  # as if killed before its end
    stamps = {p.parent.name: p.stat().st_mtime for p in (out / "runs").glob("*/run_status.json")}
    rc = sweep("ablate", cfg, "--against", ref, "--out", out, "--seed-list", "2,3",
               "--plateau-per", "0.75", "--group", "lr=lr_max,lr_max_day", "--json")
    captured = capsys.readouterr()
    assert rc == 0
    assert captured.err.count("already ended") == 7 and captured.err.count("(trained,") == 1
    assert "Resumed from" in (out / "runs" / "ref-s3" / "train.log").read_text()
    assert {p.parent.name: p.stat().st_mtime for p in (out / "runs").glob("*/run_status.json")
            if p.parent.name != "ref-s3"} == stamps
    summary = json.loads(captured.out)
    assert summary["factors"] == ["lr", "weight_decay"] and len(summary["runs"]) == 8
    assert summary["runs"][3]["variant"] == "ref" and summary["runs"][3]["status"] == "finished"


def test_another_ablation_in_the_same_folder_needs_overwrite(ablation, files, capsys):
    _, out = ablation
    cfg, ref, _ = files
    rc = sweep("ablate", cfg, "--against", ref, "--out", out, "--seed-list", "2,3",
               "--keys", "weight_decay")
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_seed_sweep_writes_the_distribution(files, capsys):
    _, ref, root = files
    out = root / "seeds"
    rc = sweep("seeds", ref, "--seed-list", "2,3", "--out", out, "--plateau-per", "0.75",
               "--quiet", "num_training_batches=20")
    assert rc == 0
    r = rows(out / "seeds.csv")
    assert [(x["variant"], x["seed"], x["status"]) for x in r] == [("config", "2", "finished"),
                                                                    ("config", "3", "finished")]
    assert all(x["left_plateau_batch"] == "10" for x in r)
    md = (out / "seeds.md").read_text()
    assert "2 of 2 seed(s) left the blank plateau, 0 collapsed" in md
    assert (out / "seeds.png").is_file()
    assert "2 of 2 seed(s) left the blank plateau" in capsys.readouterr().out
