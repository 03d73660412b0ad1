"""Benchmark: ``fastbci sweep search`` with and without pruning.

The same search twice, with the same sampler seed: 8 trials over ``lr_max`` and ``lr_max_day``
(1e-5 to 3e-2, log), a space where the trials with low learning rates cannot leave the blank
plateau. One worker in this process; each trial a training run of a small GRU on a synthetic
release (about 10 s on two CPU cores). Once with Optuna's median pruner (fastbci's default:
after 2 complete trials, from the end of the warm-up), once with ``--pruner none``.

extra_info, for each: ``batches`` (trained, all trials together), ``wall_s``, ``best_per``,
``train_s`` (the trials' own training seconds) and ``overhead_per_trial_s`` = (wall - train) /
trials: everything but training (the study, the storage, each run's setup, data loading, the
outputs). Targets: pruning trains at least 40% fewer batches, its best PER within 10% (relative)
of the best without pruning, and an overhead under 2 s per trial.
"""
from __future__ import annotations

import time

import pytest

from bench_helpers import ON_GPU

optuna = pytest.importorskip("optuna", reason="the search needs optuna (pip install "
                                              "'fastbci[sweep]')")

from fastbci import sweep, synth  # noqa: E402

TRIALS = 8
SEED = 0
SESSIONS = ["t15.2023.08.13", "t15.2023.08.18"]
RELEASE = dict(sessions=SESSIONS, train_only=[], n_train=60, n_val=6, signal=10.0, noise=0.1,
               drift=0.0, min_words=1, max_words=1, neural_dim=32)
BATCHES = 250
OVERRIDES = [f"dataset.sessions=[{','.join(SESSIONS)}]", "dataset.dataset_probability_val=[1,1]",
             "dataset.neural_dim=32", "dataset.batch_size=16", "model.n_units=64",
             "model.n_layers=1", "model.rnn_dropout=0", "model.n_input_features=32",
             "model.input_network.input_layer_sizes=[32]",
             "model.input_network.input_layer_dropout=0", f"num_training_batches={BATCHES}",
             "batches_per_val_step=25", "batches_per_train_log=50", f"lr_decay_steps={BATCHES}",
             f"lr_decay_steps_day={BATCHES}", "lr_warmup_steps=5", "lr_warmup_steps_day=5",
             "lr_min=0", "lr_min_day=0", "seed=2", "dataset.seed=2", "fastbci.impl=reference",
             "fastbci.device=cpu", "fastbci.rng=torch", "fastbci.plot=false"]
SPACE = {"lr_max": {"low": 1e-5, "high": 3e-2, "log": True},
         "lr_max_day": {"low": 1e-5, "high": 3e-2, "log": True}}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_sweep")
    synth.write_release(root / "data", seed=0, **RELEASE)
    return root / "data" / "synth_config.yaml"


def _search(config, out, pruner: str, trials: int = TRIALS) -> dict:
    t0 = time.perf_counter()
    res = sweep.search(config, space=SPACE, trials=trials, out=out, pruner=pruner, seed=SEED,
                       overrides=OVERRIDES, quiet=True)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=res.study, storage=res.storage)
    trials_ = study.get_trials()
    batches = sum(int(t.user_attrs.get("batches") or 0) for t in trials_)
    train = sum(float(t.user_attrs.get("seconds") or 0.0) for t in trials_)
    states = {s: sum(t.state.name == s for t in trials_) for s in ("COMPLETE", "PRUNED", "FAIL")}
    return {"batches": batches, "wall_s": round(wall, 2),
            "best_per": None if res.best is None else round(res.best["value"], 4),
            "train_s": round(train, 2), "overhead_per_trial_s": round((wall - train) / len(trials_), 3),
            "states": states, "params": [t.params for t in trials_]}


def test_bench_search_pruning(benchmark, config, tmp_path):
    benchmark.group = "sweep_search"
    if benchmark.disabled:  # smoke test: a two-trial search runs
        assert _search(config, tmp_path / "smoke", "median", trials=2)["states"]["COMPLETE"] == 2
        return
    pruned: dict = {}

    def run():
        pruned.update(_search(config, tmp_path / "median", "median"))

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    full = _search(config, tmp_path / "none", "none")
    fewer = 1 - pruned["batches"] / full["batches"]
    gap = (pruned["best_per"] - full["best_per"]) / full["best_per"]
    benchmark.extra_info.update(
        cpu_figures=not ON_GPU, trials=TRIALS, sampler_seed=SEED, batches_per_trial=BATCHES,
        median=pruned, none=full, fewer_batches=round(fewer, 3), best_per_gap=round(gap, 4),
        command="fastbci.sweep.search(<synthetic release>, space=lr_max, lr_max_day 1e-5..3e-2 "
                "log, trials=8, seed=0, pruner=median|none)")
    assert pruned["params"] == full["params"], "the same sampler seed samples the same trials"
    assert fewer >= 0.40, f"pruning trained {100 * fewer:.0f}% fewer batches (target 40%)"
    assert gap <= 0.10, f"best PER with pruning {100 * gap:.1f}% above without (target 10%)"
    for r in (pruned, full):
        assert r["overhead_per_trial_s"] < 2.0, r
