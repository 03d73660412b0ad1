"""``fastbci sweep search`` on a tiny synthetic release: trials run once each by two worker
processes on one SQLite file and read back with optuna; a rerun continues (runs nothing more);
a worker killed with SIGKILL mid-trial: its trial is failed by the heartbeat and retried once,
with no duplicate; a trial on the blank plateau is pruned before its last batch; a collapsed
trial is a pruned trial with its reason; best.yaml trains as it is; optuna-dashboard reads the
study over HTTP."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="the search needs optuna (pip install "
                                              "'fastbci[sweep]')")

from fastbci import commands  # noqa: E402
from fastbci.config import load_config  # noqa: E402
from sweep_helpers import (LEARN, LEARN_RELEASE, sweep, write_config,  # noqa: E402
                           write_release)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("search") / "data")


@pytest.fixture(scope="module")
def tiny(release, tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("cfg") / "tiny.yaml", release)


def space_file(path: Path, text: str = "lr_max: {low: 1.0e-4, high: 5.0e-2, log: true}\n") -> Path:
    path.write_text(text)
    return path


def load(out: Path, name: str | None = None):
    return optuna.load_study(study_name=name or out.name, storage=f"sqlite:///{out}/study.db")


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


@pytest.fixture(scope="module")
def two_workers(tiny, tmp_path_factory):
    """4 trials, 2 worker processes, one SQLite file."""
    root = tmp_path_factory.mktemp("two")
    out = root / "lr"
    rc = sweep("search", tiny, "--space", space_file(root / "space.yaml"), "--trials", 4,
               "--out", out, "--workers", 2, "--seed", 3, "--pruner", "none", "--quiet")
    return rc, out, tiny


def test_two_workers_run_each_trial_once_and_optuna_reads_them_back(two_workers):
    rc, out, _ = two_workers
    assert rc == 0
    study = load(out)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert states(study) == ["COMPLETE"] * 4, [t.user_attrs.get("reason") for t in trials]
    pids = {t.user_attrs["pid"] for t in trials}
    assert os.getpid() not in pids and len(pids) <= 2, "run by the worker processes"
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == [f"trial-{n}" for n in range(4)], "one run folder per trial, none twice"
    for t in trials:
        folder = Path(t.user_attrs["run_dir"])
        assert folder == out.resolve() / "runs" / f"trial-{t.number}"
        ran = load_config(folder / "args.yaml")
        assert ran["lr_max"] == pytest.approx(t.params["lr_max"]), "the trial's value was trained"
        assert 1e-4 <= t.params["lr_max"] <= 5e-2
        assert t.value == pytest.approx(t.user_attrs["best_per"])
        assert json.loads((folder / "run_status.json").read_text())["status"] == "finished"
        assert sorted(t.intermediate_values) == [0, 4, 8, 11], "every validation reported"
        assert min(t.intermediate_values.values()) == pytest.approx(t.value)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"] and rows[0]["lr_max"]
    for name in ("importance.png", "history.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_a_rerun_continues_the_study_and_runs_nothing_again(two_workers, capsys):
    rc, out, tiny = two_workers
    before = sorted(p.stat().st_mtime for p in (out / "runs").glob("*/run_status.json"))
    rc = sweep("search", tiny, "--space", out.parent / "space.yaml", "--trials", 4, "--out", out,
               "--workers", 2, "--seed", 3, "--pruner", "none")
    assert rc == 0
    assert "4 trial(s) for 4 asked (4 complete)" in capsys.readouterr().out
    assert len(load(out).get_trials()) == 4
    assert sorted(p.stat().st_mtime for p in (out / "runs").glob("*/run_status.json")) == before


def test_best_yaml_trains_unchanged(two_workers, tmp_path, monkeypatch):
    _, out, _ = two_workers
    best = load(out).best_trial
    cfg = load_config(out / "best.yaml")
    assert cfg["lr_max"] == pytest.approx(best.params["lr_max"])
    assert Path(cfg["output_dir"]) == out / "best"
    monkeypatch.chdir(tmp_path)
    assert commands.main(["train", str(out / "best.yaml"), "fastbci.progress=false"]) == 0
    assert json.loads((out / "best" / "run_status.json").read_text())["status"] == "finished"


def test_a_plateau_trial_is_pruned_before_its_last_batch(tmp_path):
    """Two trials that leave the plateau (validation PER 0.63-0.70 by batch 10), then one whose
    learning rates keep it there (PER above 1): the median pruner stops it at its first
    validation after the warm-up, long before its last batch."""
    cfg = write_config(tmp_path / "learn.yaml", write_release(tmp_path / "data", **LEARN_RELEASE),
                       LEARN, {"seed": 2, "dataset": {"seed": 2}})
    out = tmp_path / "prune"
    rc = sweep("search", cfg, "--space", space_file(tmp_path / "s.yaml", "lr_max: {low: 1.0e-4, "
               "high: 5.0e-2, log: true}\nlr_max_day: {low: 1.0e-4, high: 5.0e-2, log: true}\n"),
               "--trials", 3, "--out", out, "--startup-trials", 2, "--quiet",
               "--enqueue", "lr_max=0.05,lr_max_day=0.05", "--enqueue", "lr_max=0.04,lr_max_day=0.04",
               "--enqueue", "lr_max=1.0e-4,lr_max_day=1.0e-4", "lr_min=0", "lr_min_day=0")
    assert rc == 0
    t = load(out).get_trials()
    assert states(load(out)) == ["COMPLETE", "COMPLETE", "PRUNED"], [x.values for x in t]
    assert max(t[0].value, t[1].value) < 0.75 < t[2].intermediate_values[10]
    last = json.loads((Path(t[2].user_attrs["run_dir"]) / "run_status.json").read_text())
    assert last["status"] == "pruned" and last["last_batch"] == 10, last
    assert t[2].user_attrs["batches"] == 11 and t[2].user_attrs["status"] == "pruned"
    assert "the median pruner stopped it" in t[2].user_attrs["reason"]
    assert sorted(t[2].intermediate_values) == [0, 10]


def test_a_collapsed_run_is_a_pruned_trial_with_its_reason(tiny, tmp_path):
    out = tmp_path / "collapse"
    rc = sweep("search", tiny, "--space", space_file(tmp_path / "s.yaml"), "--trials", 1,
               "--out", out, "--quiet", "fastbci.collapse_blank_fraction=0.0",
               "fastbci.collapse_patience=1")
    assert rc == 0
    (t,) = load(out).get_trials()
    assert t.state.name == "PRUNED" and t.user_attrs["status"] == "collapsed"
    assert t.user_attrs["reason"].startswith("Blank collapse")
    assert "white_noise_std" in t.user_attrs["collapse_reason"] or \
        "Why blank collapse" in t.user_attrs["collapse_reason"]


def _running_trial(db: Path, name: str, timeout: float = 120.0):
    """The first RUNNING trial that has reported a validation."""
    end = time.time() + timeout
    while time.time() < end:
        time.sleep(0.3)
        if not db.exists():
            continue
        try:
            study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
        except Exception:  # the search is still creating its study
            continue
        for t in study.get_trials():
            if t.state.name == "RUNNING" and t.intermediate_values and "pid" in t.user_attrs:
                return t
    raise AssertionError("no trial started within the time allowed")


def test_a_killed_worker_s_trial_is_retried_once_without_duplicate(tiny, tmp_path):
    out = tmp_path / "kill"
    space = space_file(tmp_path / "s.yaml")
    cmd = [sys.executable, "-m", "fastbci.sweep", "search", str(tiny), "--space", str(space),
           "--trials", "4", "--out", str(out), "--workers", "2", "--pruner", "none",
           "--heartbeat", "1", "--grace", "3", "--seed", "1", "--quiet",
           "num_training_batches=40", "batches_per_val_step=4", "lr_decay_steps=40",
           "lr_decay_steps_day=40"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = _running_trial(out / "study.db", out.name)
        os.kill(victim.user_attrs["pid"], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout + stderr
    assert "exited with status -9" in stdout + stderr
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = load(out).get_trials()
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(done) == 4 and [t.number for t in failed] == [victim.number], states(load(out))
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.params == victim.params and retry.state.name == "COMPLETE"
    assert retry.user_attrs["retry_of"] == victim.number
    assert len({t.number for t in trials}) == len(trials) == 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_reads_the_study_over_http(two_workers):
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed")
    _, out, _ = two_workers
    port = _free_port()
    exe = Path(sys.executable).parent / "optuna-dashboard"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "optuna_dashboard"]
    proc = subprocess.Popen([*cmd, f"sqlite:///{out}/study.db", "--host", "127.0.0.1", "--port",
                             str(port), "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        studies = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                time.sleep(0.2)
        assert studies is not None, "the dashboard did not answer"
        (summary,) = [s for s in studies if s["study_name"] == out.name]
        url = f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}?after=0"
        with urllib.request.urlopen(url, timeout=10) as r:
            detail = json.load(r)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    trials = detail["trials"]
    assert len(trials) == 4 and {t["state"] for t in trials} == {"Complete"}
    attrs = {a["key"]: a["value"] for a in trials[0]["user_attrs"]}
    assert attrs["status"] == "finished" and attrs["run_dir"].endswith("runs/trial-0")
    assert {p["name"] for p in trials[0]["params"]} == {"lr_max"}


def test_a_journal_file_storage_with_hyperband_and_one_worker_per_device(tiny, tmp_path):
    """``--storage journal:PATH`` (no database), the Hyperband pruner, and ``--devices``: one
    worker process per device, each seeing only its own (CUDA_VISIBLE_DEVICES)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    out = tmp_path / "journal"
    journal = tmp_path / "study.log"
    rc = sweep("search", tiny, "--space", space_file(tmp_path / "s.yaml"), "--trials", 3,
               "--out", out, "--storage", f"journal:{journal}", "--pruner", "hyperband",
               "--devices", "0,1", "--quiet")
    assert rc == 0
    study = optuna.load_study(study_name=out.name,
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    trials = study.get_trials()
    assert len(trials) == 3 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert {t.user_attrs["cuda_visible_devices"] for t in trials} <= {"0", "1"}
    assert not (out / "study.db").exists()
    assert (out / "trials.csv").read_text().count("\n") == 4
