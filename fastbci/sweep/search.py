"""``search``: a hyperparameter search over a space with Optuna, each trial an ordinary training
run in ``OUT/runs/trial-<number>/`` whose validations are reported to Optuna (and pruned by it);
``worker``: one process that runs the trials of a study, on this machine or any other that
reaches the storage. Workers are processes, never threads (torch)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from fastbci import config as config_mod
from fastbci import outputs
from fastbci.errors import ConfigError
from fastbci.sweep import plan, results, runner, space as space_mod, study as study_mod

SEARCH_FILES = ("trials.csv", "best.yaml", "importance.png", "history.png")
#: run statuses a trial ends as pruned (the pruner, the collapse watch, a non-finite loss)
PRUNED_STATUSES = ("pruned", "collapsed", "nonfinite")


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _objective(trial, d: Mapping[str, Any], out: Path, lock: study_mod.StudyLock, quiet: bool):
    """One trial: a training run of the configuration with the trial's values; each validation
    reported; the best validation PER returned."""
    optuna = study_mod.require_optuna()
    lock.release()  # the trial exists: other workers may count it and start theirs
    t0 = time.time()
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    retry_of = frozen.system_attrs.get("failed_trial", frozen.user_attrs.get("retry_of"))
    params = space_mod.sample(trial, d["space"])
    folder = out / "runs" / f"trial-{trial.number}"
    attrs = {"run_dir": str(folder), "status": "running", "host": socket.gethostname(),
             "pid": os.getpid(), "retry_of": retry_of, "reason": None,
             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    cfg = plan.run_config(d["config"], params, folder, None)

    def on_validation(k: int, record: dict) -> str | None:
        per = record.get("per")
        if per is None:
            return None
        trial.report(float(per), k)
        if trial.should_prune():
            return f"the {d['pruner']} pruner stopped it (validation PER {per:.4f} at batch {k})"
        return None

    try:
        res = runner.train(cfg, on_validation=on_validation)
    except KeyboardInterrupt:
        trial.set_user_attr("status", "interrupted")
        trial.study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
        raise
    if res.status == "interrupted":
        trial.set_user_attr("status", "interrupted")
        trial.study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
        raise KeyboardInterrupt
    reason = res.message.strip().splitlines()[0] if res.message.strip() else res.status
    for k, v in {"status": res.status, "best_per": res.best_per, "final_per": res.final_per,
                 "batches": res.batches, "seconds": res.seconds,
                 "left_plateau_batch": res.left_plateau_batch,
                 "wall_seconds": time.time() - t0}.items():
        trial.set_user_attr(k, v)
    _say(quiet, f"trial {trial.number}: {res.status} after {res.batches} batches, best PER "
                f"{'-' if res.best_per is None else f'{res.best_per:.4f}'} ({results.fmt_params(params)})")
    if res.status in PRUNED_STATUSES:
        trial.set_user_attr("reason", reason)
        if res.status == "collapsed":
            trial.set_user_attr("collapse_reason", res.message)
        raise optuna.TrialPruned(reason)
    if res.status == "failed" or res.best_per is None:
        trial.set_user_attr("reason", res.message or "no validation PER")
        raise RuntimeError(f"trial {trial.number} failed: {res.message or 'no validation PER'}")
    return float(res.best_per)


def _load(storage_url: str, name: str, heartbeat: int, grace: int | None, index: int = 0):
    optuna = study_mod.require_optuna()
    st = study_mod.open_storage(storage_url, heartbeat, grace)
    try:
        s = optuna.load_study(study_name=name, storage=st)
    except KeyError:
        raise ConfigError(f"no study {name} in {storage_url}") from None
    d = study_mod.definition_of(s)
    if not d:
        raise ConfigError(f"study {name} in {storage_url} is not a fastbci search")
    seed = d.get("seed")
    sampler = optuna.samplers.TPESampler(seed=None if seed is None else int(seed) + index)
    s = optuna.load_study(study_name=name, storage=st, sampler=sampler,
                          pruner=study_mod.make_pruner(d["pruner"], d))
    return s, d, st


def worker(storage: str, study: str, *, out: str | os.PathLike | None = None,
           threads: int | None = None, index: int = 0, heartbeat: int = 20,
           grace: int | None = None, quiet: bool = False) -> int:
    """Run the trials of ``study`` until it has as many as its search asks for; returns how
    many this worker ran. ``out``: where the run folders go (default: the search's own folder,
    which must then be reachable from here); ``threads``: torch threads of this process;
    ``index``: this worker's number (its sampler seed is the search's seed + index)."""
    optuna = study_mod.require_optuna()
    if threads:
        import torch
        torch.set_num_threads(int(threads))
    s, d, st = _load(storage, study, heartbeat, grace, index)
    out = Path(out) if out is not None else Path(d["out"])
    lock = study_mod.StudyLock(storage, study)
    beats = study_mod.heartbeat_on(st)
    ran = 0
    while True:
        start = False
        lock.acquire()
        try:
            if beats:
                optuna.storages.fail_stale_trials(s)
            done, running, waiting = study_mod.tally(s)
            if done >= int(d["trials"]) or (not beats and not waiting
                                              and done + running >= int(d["trials"])):
                break
            start = waiting > 0 or done + running < int(d["trials"])
        finally:
            if not start:
                lock.release()
        if not start:  # the rest is running elsewhere: wait for it (or for its heartbeat to stop)
            time.sleep(max(1.0, heartbeat / 2))
            continue
        try:
            s.optimize(lambda t: _objective(t, d, out, lock, quiet), n_trials=1,
                       catch=(Exception,))
        finally:
            lock.release()
        ran += 1
    return ran


def search(config: str | os.PathLike, *, space: str | os.PathLike | Mapping, trials: int,
           out: str | os.PathLike, storage: str | None = None, study: str | None = None,
           pruner: str = "median", workers: int = 1, devices: Sequence[str] | None = None,
           overrides: Sequence[str] = (), seed: int | None = None,
           enqueue: Sequence[Mapping[str, Any]] = (), heartbeat: int = 20,
           grace: int | None = None, startup_trials: int = 2, prune_after: int | None = None,
           quiet: bool = False) -> results.SearchResult:
    """Search ``space`` (a YAML file or a mapping, :mod:`fastbci.sweep.space`) for the lowest
    best validation PER of ``config`` (with ``overrides``) in ``trials`` trials, ``workers``
    processes at once (``devices``: one worker per GPU, each seeing only its own; 0: create or
    check the study and start no worker, for workers started elsewhere). Storage:
    SQLite ``OUT/study.db`` unless ``storage`` names another; a second call continues the
    study. ``enqueue``: values to try first (when the study is created). ``prune_after``: no
    pruning before this batch (default: the end of the learning-rate warm-up)."""
    study_mod.require_optuna()
    out = Path(out)
    cfg = config_mod.load_config(config, overrides)
    sp = space_mod.load(space, cfg) if not isinstance(space, Mapping) else space_mod.check(space, cfg)
    for values in enqueue:
        plan.with_values(cfg, space_mod.check_values(values, sp))
    if pruner not in study_mod.PRUNERS:
        raise ConfigError(f"--pruner {pruner}: one of {', '.join(study_mod.PRUNERS)}")
    devices = list(devices or [])
    workers = len(devices) or int(workers)
    name = study or out.resolve().name
    url = study_mod.storage_url(storage, out)
    runner.check_out(out, "search")
    warm = max(int(cfg["lr_warmup_steps"]), int(cfg["lr_warmup_steps_day"]))
    d = {"kind": "search", "config": cfg, "space": sp, "trials": int(trials),
         "out": str(out.resolve()), "pruner": pruner, "seed": seed,
         "startup_trials": int(startup_trials),
         "prune_after": warm if prune_after is None else int(prune_after),
         "val_every": int(cfg["batches_per_val_step"]), "batches": int(cfg["num_training_batches"])}
    if storage is not None:  # a storage outside OUT: checked before OUT is made
        s = _create(url, name, d, heartbeat, grace, enqueue)
    runner.mark(out, "search", None, storage=study_mod.hide_password(url), study=name)
    if storage is None:
        s = _create(url, name, d, heartbeat, grace, enqueue)
    _say(quiet, f"Search {name}: {trials} trial(s) over {', '.join(sp)} with {workers} "
                f"worker(s); storage {study_mod.hide_password(url)}; runs in {out}/runs")
    notes = _run_workers(url, name, workers, devices, heartbeat, grace, quiet, s)
    return results.finish(s, out, url, name, d, notes)


def _create(url: str, name: str, d: Mapping[str, Any], heartbeat: int, grace: int | None,
            enqueue: Sequence[Mapping[str, Any]]):
    """The study of the search: created (with its definition and the queued values), or the
    existing one after checking it is this search."""
    optuna = study_mod.require_optuna()
    st = study_mod.open_storage(url, heartbeat, grace)
    try:
        s = optuna.load_study(study_name=name, storage=st)
    except KeyError:
        s = None
    if s is not None:
        study_mod.check_same(name, url, study_mod.definition_of(s), d)
        s.set_user_attr(study_mod.ATTR + "trials", d["trials"])
        s.set_user_attr(study_mod.ATTR + "pruner", d["pruner"])
        return s
    s = optuna.create_study(study_name=name, storage=st, direction="minimize",
                            load_if_exists=True)
    study_mod.define(s, d)
    for values in enqueue:
        s.enqueue_trial(dict(values))
    return s


def _run_workers(url: str, name: str, workers: int, devices: list[str], heartbeat: int,
                 grace: int | None, quiet: bool, s) -> list[str]:
    """One worker in this process, or ``workers`` worker processes (each with its share of the
    cores, or its own GPU); progress lines as their trials end."""
    if workers == 0:
        return [f"no worker started here (--workers 0): start them with fastbci sweep "
                f"worker --storage {study_mod.hide_password(url)} --study {name}"]
    if workers == 1 and not devices:
        worker(url, name, heartbeat=heartbeat, grace=grace, quiet=quiet)
        return []
    threads = study_mod.cpu_threads(workers)
    procs = []
    logs = Path(study_mod.definition_of(s)["out"]) / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    outputs.record(logs, tree=True)  # the workers' logs (appended by their processes)
    for i in range(workers):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = str(devices[i])
        cmd = [sys.executable, "-m", "fastbci.sweep", "worker", "--storage", url, "--study", name,
               "--threads", str(threads), "--index", str(i), "--heartbeat", str(heartbeat)]
        if grace is not None:
            cmd += ["--grace", str(grace)]
        with open(logs / f"worker-{i}.log", "ab") as log:
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log))
    return results.follow(s, procs, quiet, logs)
