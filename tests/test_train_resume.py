"""Exact resume: an interrupted and resumed run gives the same losses as an uninterrupted one."""
import json

import numpy as np
import pytest
import torch

from helpers import run_config
from fastbci import checkpoint as ckpt_io
from fastbci.training import Trainer


@pytest.fixture(scope="module")
def synth_dir(synth_release):
    return synth_release(seed=1)


BASE = ["model.n_units=16", "model.n_layers=2", "model.rnn_dropout=0.3", "dataset.batch_size=5",
        "dataset.days_per_batch=2", "num_training_batches=6", "batches_per_train_log=1",
        "batches_per_val_step=2", "lr_max=0.01", "lr_max_day=0.01", "lr_warmup_steps=2",
        "lr_warmup_steps_day=2", "lr_decay_steps=6", "lr_decay_steps_day=6",
        "dataset.data_transforms.random_cut=3", "fastbci.impl=reference", "fastbci.device=cpu",
        "fastbci.progress=false", "fastbci.plot=false"]


def make_cfg(synth_dir, out, *over):
    return run_config(synth_dir, out, BASE, *over)


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _strip_seconds(recs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


@pytest.mark.parametrize("rng", ["philox", "torch"])
def test_interrupted_and_resumed_run_equals_straight_run(synth_dir, tmp_path, rng):
    straight = Trainer(make_cfg(synth_dir, tmp_path / "a", f"fastbci.rng={rng}"), console=False).fit()
    assert straight.status == "finished"

    out = tmp_path / "b"
    first = Trainer(make_cfg(synth_dir, out, f"fastbci.rng={rng}"), console=False).fit(stop_after=3)
    assert first.status == "interrupted" and first.last_batch == 2
    assert "fastbci.resume=true" in first.message
    assert (out / "checkpoint" / ckpt_io.RESUME_NAME).is_file()
    second = Trainer(make_cfg(synth_dir, out, f"fastbci.rng={rng}", "fastbci.resume=true"),
                       console=False).fit()
    assert second.status == "finished"

    a, b = straight.train_losses, second.train_losses
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(b, a, err_msg=f"rng={rng}: resumed losses differ from the straight run")
    assert second.best_val_per == straight.best_val_per
    assert second.best_val_loss == straight.best_val_loss
    assert _strip_seconds(second.val_history) == _strip_seconds(straight.val_history)
    # the metrics file reads as one run (no duplicate records after the resume)
    assert _strip_seconds(_metrics(out)) == _strip_seconds(_metrics(tmp_path / "a"))
    # same final weights, bit for bit
    wa = torch.load(tmp_path / "a/checkpoint/resume_checkpoint", weights_only=False)["model_state_dict"]
    wb = torch.load(out / "checkpoint/resume_checkpoint", weights_only=False)["model_state_dict"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after resume"


def test_resume_from_a_periodic_checkpoint_after_a_crash(synth_dir, tmp_path):
    """checkpoint_every: the run dies after batch 4 (no validation since batch 2); resuming
    from the batch-4 checkpoint redoes nothing twice and ends where the straight run ends."""
    straight = Trainer(make_cfg(synth_dir, tmp_path / "a", "batches_per_val_step=100"),
                         console=False).fit()
    out = tmp_path / "b"
    tr = Trainer(make_cfg(synth_dir, out, "batches_per_val_step=100", "fastbci.checkpoint_every=2"),
                   console=False).setup()
    real_step = tr.parts.step

    def crashing_step(k, rows, stop_request):
        if k == 5:
            raise KeyboardInterrupt  # a hard interrupt in the middle of a batch
        return real_step(k, rows, stop_request)

    tr.parts.step = crashing_step
    res = tr.fit()
    assert res.status == "interrupted" and "resume_checkpoint" in res.message
    st = ckpt_io.resume_state_of(ckpt_io.load(out / "checkpoint/resume_checkpoint"), "x")
    assert st["next_batch"] == 4, "checkpoint_every=2 saved after batch 3 (the 4th batch)"
    resumed = Trainer(make_cfg(synth_dir, out, "batches_per_val_step=100", "fastbci.checkpoint_every=2",
                                 "fastbci.resume=true"), console=False).fit()
    np.testing.assert_array_equal(resumed.train_losses, straight.train_losses)


def test_resume_with_an_explicit_path_and_request_stop(synth_dir, tmp_path):
    out = tmp_path / "c"
    tr = Trainer(make_cfg(synth_dir, out), console=False).setup()
    real_step = tr.parts.step

    def step_then_stop(k, rows, stop_request):
        r = real_step(k, rows, stop_request)
        if k == 0:
            tr.request_stop()  # what Ctrl-C does: finish this batch, save, exit
        return r

    tr.parts.step = step_then_stop
    res = tr.fit()
    assert res.status == "interrupted" and res.last_batch == 0
    path = out / "checkpoint" / ckpt_io.RESUME_NAME
    moved = tmp_path / "saved_state.pt"
    path.rename(moved)
    resumed = Trainer(make_cfg(synth_dir, out, f"fastbci.resume={moved}"), console=False).fit()
    straight = Trainer(make_cfg(synth_dir, tmp_path / "d"), console=False).fit()
    np.testing.assert_array_equal(resumed.train_losses, straight.train_losses)


def test_resume_refuses_an_official_checkpoint_with_a_hint(synth_dir, tmp_path):
    off = tmp_path / "official_ckpt"
    tr = Trainer(make_cfg(synth_dir, tmp_path / "e"), console=False).setup()
    torch.save({"model_state_dict": tr.model.official_state_dict(), "val_PER": 0.5}, off)
    with pytest.raises(ckpt_io.CheckpointError, match="init_from_checkpoint"):
        Trainer(make_cfg(synth_dir, tmp_path / "f", f"fastbci.resume={off}"), console=False).setup()


def test_init_from_checkpoint_continues_at_the_saved_batch(synth_dir, tmp_path):
    """Official defect fixed: init_from_checkpoint continues at the scheduler's step count."""
    out = tmp_path / "g"
    Trainer(make_cfg(synth_dir, out), console=False).fit(stop_after=4)
    ck = ckpt_io.load(out / "checkpoint" / ckpt_io.RESUME_NAME)
    official = {k: ck[k] for k in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
                                    "val_PER", "val_loss")}
    p = tmp_path / "official_style"
    torch.save(official, p)
    tr = Trainer(make_cfg(synth_dir, tmp_path / "h", "init_from_checkpoint=true",
                            f"init_checkpoint_path={p}"), console=False).setup()
    assert tr.state.next_batch == 4
    assert tr.optimizer.param_groups[-1]["lr"] == pytest.approx(
        ck["optimizer_state_dict"]["param_groups"][-1]["lr"])
    res = tr.fit()
    assert res.status == "finished" and np.isnan(res.train_losses[:4]).all() \
        and np.isfinite(res.train_losses[4:]).all()
