"""Distributed training (DataParallel: torch DistributedDataParallel under torchrun): 2 gloo
processes on the CPU equal 1 process.

The end-to-end tests launch ``torchrun --standalone --nproc_per_node=2 -m fastbci.train`` as a
subprocess (a free port is picked by torchrun's standalone rendezvous; every launch is
time-bounded) on the small synthetic release with a tiny model, the reference ops and the
dropouts at 0, and compare against an in-process single-process run with the same global batch:
losses, validation, final weights, AdamW state of the day layers, and resume across world sizes.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from fastbci import checkpoint as ckpt_io
from fastbci import commands, synth
from fastbci.config import ConfigError, load_config
from fastbci.devices import select_device
from fastbci.errors import EXIT_CONFIG
from fastbci.training import DataParallel, Trainer
from fastbci.training import parallel as D
from fastbci.validation import forward_logits

N_BATCHES = 6
BATCH = 6
LAUNCH_TIMEOUT_S = 150

BASE = ["model.n_units=16", "model.n_layers=2", "model.rnn_dropout=0.0",
        "model.input_network.input_layer_dropout=0.0",
        f"dataset.batch_size={BATCH}", "dataset.days_per_batch=2",
        f"num_training_batches={N_BATCHES}", "batches_per_train_log=1", "batches_per_val_step=3",
        "save_all_val_steps=true",
        "lr_max=0.01", "lr_max_day=0.01", "lr_warmup_steps=2", "lr_warmup_steps_day=2",
        "lr_decay_steps=6", "lr_decay_steps_day=6",
        "fastbci.impl=reference", "fastbci.rng=philox", "fastbci.device=cpu",
        "fastbci.progress=false", "fastbci.plot=false"]


def _overrides(out: Path, *extra) -> list[str]:
    return [f"output_dir={out}", f"checkpoint_dir={out}/checkpoint", *BASE, *extra]


def _torchrun(cfg_path: Path, overrides, log: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "fastbci.train", str(cfg_path), *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun did not finish in {LAUNCH_TIMEOUT_S} s:\n{e.output}")
    log.write_text(proc.stdout)
    assert proc.returncode == 0, f"torchrun failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}"


def _ckpt(out: Path, name: str = ckpt_io.RESUME_NAME) -> dict:
    return torch.load(out / "checkpoint" / name, map_location="cpu", weights_only=False)


def _close(a, b, what, rtol=1e-5, atol=1e-6):
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    diff = (a - b).abs()
    bad = diff > atol + rtol * b.abs()
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} elements differ; max abs "
                           f"diff {float(diff.max()):.3e} at flat index {int(diff.argmax())} "
                           f"({float(a.flatten()[diff.argmax()])} vs {float(b.flatten()[diff.argmax()])})")


def _same_weights(wa: dict, wb: dict, what: str) -> None:
    assert wa.keys() == wb.keys(), f"{what}: state-dict keys differ"
    for k in wa:
        _close(wa[k], wb[k], f"{what}: {k}")


def _day_steps(ck: dict, n_days: int) -> dict[int, int]:
    """AdamW step count of every day weight and bias that has optimiser state (day group)."""
    sd = ck["optimizer_state_dict"]
    ids = sd["param_groups"][1]["params"]
    out = {}
    for d in range(n_days):
        steps = [int(sd["state"][i]["step"]) for i in (ids[d], ids[n_days + d]) if i in sd["state"]]
        if steps:
            assert steps[0] == steps[-1], f"day {d}: weight and bias took different step counts"
            out[d] = steps[0]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One straight single-process run, one straight 2-process run, and the two cross resumes
    (world 1 -> 2 and world 2 -> 1) from the batch-3 checkpoints (next batch 4)."""
    root = tmp_path_factory.mktemp("dist")
    data = root / "synth"
    synth.write_release(data, **synth.PRESETS["small"], seed=3)
    cfg_path = data / "synth_config.yaml"

    one = root / "w1"
    tr = Trainer(load_config(cfg_path, _overrides(one)), console=False)
    res1 = tr.fit()
    assert res1.status == "finished"

    two = root / "w2"
    _torchrun(cfg_path, _overrides(two), root / "w2.log")

    # world 1 checkpoint -> resume on 2 ranks
    r12 = root / "r12"
    _torchrun(cfg_path, _overrides(r12, f"fastbci.resume={one / 'checkpoint' / 'checkpoint_batch_3'}"),
              root / "r12.log")
    # world 2 checkpoint -> resume in one process
    r21 = root / "r21"
    res21 = Trainer(load_config(cfg_path, _overrides(
        r21, f"fastbci.resume={two / 'checkpoint' / 'checkpoint_batch_3'}")), console=False).fit()
    assert res21.status == "finished"
    return {"trainer": tr, "res1": res1, "one": one, "two": two, "r12": r12, "r21": r21,
            "res21": res21, "root": root}


@pytest.mark.slow
def test_the_plan_splits_days_across_ranks(runs):
    """The comparison below is only meaningful if some day sits on one rank only and some day
    is absent from some global batch: check that the plan of this run has both."""
    tr = runs["trainer"]
    split = absent = False
    n_days = len(tr.cfg["dataset"]["sessions"])
    for k in range(N_BATCHES):
        rows = np.asarray(tr.plan[k])
        halves = [set(tr.train_store.day_np[rows[lo:hi]].tolist())
                  for lo, hi in (D.shard_bounds(BATCH, r, 2) for r in range(2))]
        split |= bool(halves[0] ^ halves[1])
        absent |= len(halves[0] | halves[1]) < n_days
    assert split and absent


@pytest.mark.slow
def test_two_ranks_match_one_process(runs):
    ck1, ck2 = _ckpt(runs["one"]), _ckpt(runs["two"])
    l1, l2 = ck1["fastbci"]["train_losses"], ck2["fastbci"]["train_losses"]
    assert len(l1) == len(l2) == N_BATCHES and np.isfinite(l1).all()
    _close(l2, l1, "per-batch training loss, 2 ranks vs 1 process")
    _same_weights(ck2["model_state_dict"], ck1["model_state_dict"], "final weights, 2 ranks vs 1")
    # validation: sharded over the ranks, reduced to the same PER and loss
    v1, v2 = ck1["fastbci"]["val_history"], ck2["fastbci"]["val_history"]
    assert [r["batch"] for r in v2] == [r["batch"] for r in v1] == [0, 3, 5]
    for a, b in zip(v2, v1):
        assert abs(a["per"] - b["per"]) < 1e-12, f"val PER at batch {b['batch']}: {a['per']} vs {b['per']}"
        assert a["per_by_day"].keys() == b["per_by_day"].keys()
        _close(a["loss"], b["loss"], f"val loss at batch {b['batch']}")
    # only rank 0 wrote: one metrics record per train log and validation
    recs = [json.loads(x) for x in (runs["two"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in recs if r["split"] == "train"] == list(range(N_BATCHES))
    train1 = [json.loads(x) for x in (runs["one"] / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip([r for r in recs if r["split"] == "train"], [r for r in train1 if r["split"] == "train"]):
        assert a["per"] == pytest.approx(b["per"], abs=1e-12), "train-log PER is reduced over ranks"


@pytest.mark.slow
def test_days_absent_from_the_global_batch_are_untouched(runs):
    """AdamW stepped each day exactly once per global batch holding it, on both world sizes:
    a day absent from the global batch had grad None (no decay, no moment update), and a day
    present on the other rank only still got its reduced gradient (the weights match above)."""
    tr = runs["trainer"]
    n_days = len(tr.cfg["dataset"]["sessions"])
    expected: dict[int, int] = {}
    for k in range(N_BATCHES):
        for d in set(tr.train_store.day_np[np.asarray(tr.plan[k])].tolist()):
            expected[d] = expected.get(d, 0) + 1
    assert _day_steps(_ckpt(runs["one"]), n_days) == expected
    assert _day_steps(_ckpt(runs["two"]), n_days) == expected


@pytest.mark.slow
@pytest.mark.parametrize("which", ["r12", "r21"])
def test_resume_across_world_sizes(runs, which):
    """Save at world 1 -> resume on 2 ranks, and save on 2 ranks -> resume at world 1: the
    continued losses and final weights match the uninterrupted single-process run."""
    ck1, ckr = _ckpt(runs["one"]), _ckpt(runs[which])
    st = ckr["fastbci"]
    assert st["next_batch"] == N_BATCHES
    _close(st["train_losses"][4:], ck1["fastbci"]["train_losses"][4:],
           f"{which}: losses of the batches after the resume")
    _same_weights(ckr["model_state_dict"], ck1["model_state_dict"], f"{which}: final weights")
    recs = [json.loads(x) for x in (runs[which] / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in recs if r["split"] == "train"] == [4, 5]
    if which == "r12":
        assert st.get("world_size") == 2 and len(st["rng_by_rank"]) == 2


# ---------------------------------------------------------------------------------------------
# in-process units: environment, checks, sharding, the reducer
# ---------------------------------------------------------------------------------------------
def test_env_from_os():
    assert D.env_from_os({}) is None
    env = D.env_from_os({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (3, 4, 1, False)
    with pytest.raises(ConfigError, match="RANK=4 is outside"):
        D.env_from_os({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not an integer"):
        D.env_from_os({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(ConfigError, match="without WORLD_SIZE"):
        D.env_from_os({"RANK": "0"})


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist_units")
    synth.write_release(d / "data", **synth.PRESETS["small"], seed=5)
    return lambda *extra: load_config(d / "data" / "synth_config.yaml", _overrides(d / "out", *extra))


@pytest.mark.parametrize("batch,world,ok", [(6, 1, True), (6, 2, True), (6, 3, True),
                                            (6, 4, False), (7, 2, False), (3, 6, False)])
def test_world_size_must_divide_the_global_batch(small_cfg, batch, world, ok):
    cfg = small_cfg(f"dataset.batch_size={batch}")
    if ok:
        D.check_world_size(cfg, world)
        lo_hi = [D.shard_bounds(batch, r, world) for r in range(world)]
        assert lo_hi[0][0] == 0 and lo_hi[-1][1] == batch
        assert all(a[1] == b[0] for a, b in zip(lo_hi, lo_hi[1:]))
    else:
        with pytest.raises(ConfigError, match=f"batch_size={batch} .* not divisible by the world size {world}"):
            D.check_world_size(cfg, world)


def test_torch_rng_and_pinned_devices_are_refused(small_cfg):
    with pytest.raises(ConfigError, match="fastbci.rng=philox"):
        D.check_world_size(small_cfg("fastbci.rng=torch"), 2)
    D.check_world_size(small_cfg("fastbci.rng=torch"), 1)
    env = D.DistEnv(rank=1, world_size=2, local_rank=1)
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
        select_device(small_cfg("fastbci.device=cuda:1"), local_rank=env.local_rank)
    assert select_device(small_cfg("fastbci.device=cpu"), local_rank=env.local_rank) == torch.device("cpu")


def test_cli_rejects_an_indivisible_batch_before_joining(small_cfg, tmp_path, monkeypatch, capsys):
    cfg_path = tmp_path / "c.yaml"
    from fastbci import config as config_mod
    config_mod.dump(small_cfg("dataset.batch_size=5"), cfg_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert commands.main(["train", str(cfg_path)]) == EXIT_CONFIG
    assert "not divisible by the world size 2" in capsys.readouterr().err
    assert not dist.is_initialized()


@pytest.mark.parametrize("rank", [0, 1])
def test_slice_batch_rows_give_the_full_batch_logits(small_cfg, rank):
    """A rank's trimmed slice gives the same logits on every frame its trials use."""
    out = Path(small_cfg()["output_dir"]).parent / f"slice{rank}"
    cfg = small_cfg("dataset.data_transforms.random_cut=3", f"output_dir={out}",
                    f"checkpoint_dir={out}/checkpoint")
    tr = Trainer(cfg, console=False).setup()
    rows = np.asarray(tr.plan[2])
    full = tr.builder.batch(tr.train_store, rows, mode="train", step=2)
    lo, hi = D.shard_bounds(len(rows), rank, 2)
    part = full.select(lo, hi, min_time=14)
    assert part.features.shape[1] <= full.features.shape[1]
    tr.model.eval()
    with torch.no_grad():
        lf, nf = forward_logits(tr.model, full, seed=1, step=2)
        lp, npart = forward_logits(tr.model, part, seed=1, step=2)
    assert torch.equal(npart, nf[lo:hi])
    for i in range(hi - lo):
        n = int(npart[i])
        _close(lp[i, :n], lf[lo + i, :n], f"rank {rank} trial {i}: logits of the slice")


@pytest.mark.slow
def test_ddp_keeps_the_official_day_gradients(tmp_path):
    """Two gloo ranks under torchrun, each with its share of one batch inside DataParallel's
    DistributedDataParallel: every shared gradient and the gradient of a day on both ranks or on
    one rank only equals the one-process gradient of the whole batch (summed, not averaged); a
    day on no rank keeps grad None on both ranks (so AdamW leaves it alone)."""
    import ddp_worker
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=LAUNCH_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-4000:]
    m = ddp_worker.model()
    (x0, d0), (x1, d1) = ddp_worker.batch(0), ddp_worker.batch(1)
    x, days = torch.cat([x0, x1]), torch.cat([d0, d1])
    m(x, days, days_present=[0, 1, 2]).float().pow(2).mean((1, 2)).mean().backward()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"grads_{rank}.pt")
        for n, p in m.named_parameters():
            if n in ("day_weights.3", "day_biases.3"):
                assert got[n] is None, f"rank {rank}: {n} (a day on no rank) got a gradient"
            else:
                assert got[n] is not None, f"rank {rank}: {n} has no gradient"
                _close(got[n], p.grad, f"rank {rank}: {n}")


def test_world_of_one_stops_on_sigterm_after_the_vote_and_saves_rank_states(small_cfg, tmp_path):
    """A DataParallel trainer in a one-process gloo group: SIGTERM is a vote to stop, agreed in
    the next step's all-reduce; rank 0 saves a resumable checkpoint with every rank's generator
    states; the losses equal a plain single-process run."""
    import signal
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        out = tmp_path / "d1"
        cfg = small_cfg(f"output_dir={out}", f"checkpoint_dir={out}/checkpoint",
                        "batches_per_val_step=100")
        tr = Trainer(cfg, DataParallel(D.DistEnv(0, 1, 0)), console=False).setup()
        real = tr.parts.step

        def step(k, rows, stop_request):
            r = real(k, rows, stop_request)
            if k == 1:
                handler = signal.getsignal(signal.SIGTERM)
                assert callable(handler), "fit() did not install a SIGTERM handler"
                signal.raise_signal(signal.SIGTERM)
            return r

        tr.parts.step = step
        before = signal.getsignal(signal.SIGTERM)
        res = tr.fit()
        assert signal.getsignal(signal.SIGTERM) is before, "fit() left its SIGTERM handler behind"
        assert res.status == "interrupted" and res.last_batch == 2, res
        st = ckpt_io.resume_state_of(ckpt_io.load(out / "checkpoint" / ckpt_io.RESUME_NAME), "x")
        assert st["next_batch"] == 3 and st["world_size"] == 1 and len(st["rng_by_rank"]) == 1
    finally:
        dist.destroy_process_group()
    plain_out = tmp_path / "p1"
    plain = Trainer(small_cfg(f"output_dir={plain_out}", f"checkpoint_dir={plain_out}/checkpoint",
                                "batches_per_val_step=100"), console=False).fit(stop_after=3)
    _close(res.train_losses[:3], plain.train_losses[:3], "world-of-one vs plain losses")
