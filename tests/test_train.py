"""The trainer on tiny synthetic data: a short run, clipping, files, output-directory policy,
blank-collapse watch and non-finite handling."""
import json
import math

import numpy as np
import pytest
import torch

from fastbci import commands, synth
from fastbci.devices import select_device
from fastbci.errors import NonFiniteError
from fastbci.reference import patch_input_lengths
from fastbci.config import ConfigError, load_config
from fastbci.training import Trainer
from helpers import run_config, shift_logits


@pytest.fixture(scope="module")
def synth_dir(synth_release):
    return synth_release(seed=0)


#: a tiny model (1 GRU layer of 16 units) on the small synthetic release, CPU reference path
BASE = ["model.n_units=16", "model.n_layers=1", "model.rnn_dropout=0.0", "dataset.batch_size=6",
        "dataset.days_per_batch=2", "num_training_batches=8", "batches_per_train_log=1",
        "batches_per_val_step=4", "lr_max=0.01", "lr_max_day=0.01", "lr_warmup_steps=2",
        "lr_warmup_steps_day=2", "lr_decay_steps=40", "lr_decay_steps_day=40",
        "fastbci.impl=reference", "fastbci.device=cpu", "fastbci.progress=false", "fastbci.plot=false"]


def make_cfg(synth_dir, out, *over):
    return run_config(synth_dir, out, BASE, *over)


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_short_run_loss_falls_and_writes_its_files(synth_dir, tmp_path):
    out = tmp_path / "run"
    cfg = make_cfg(synth_dir, out, "num_training_batches=24", "batches_per_val_step=8",
                   "batches_per_train_log=4", "fastbci.plot=true", "dataset.data_transforms.white_noise_std=0.2",
                   "dataset.data_transforms.constant_offset_std=0.05")
    res = Trainer(cfg, console=False).fit()
    assert res.status == "finished", res.message
    losses = res.train_losses
    assert losses.shape == (24,) and np.isfinite(losses).all(), losses
    first, last = losses[2:6].mean(), losses[-4:].mean()
    assert last < 0.8 * first, f"loss did not fall: first batches {losses[2:6]}, last {losses[-4:]}"

    for name in ("train.log", "metrics.jsonl", "args.yaml", "training_curves.png",
                 "checkpoint/best_checkpoint", "checkpoint/resume_checkpoint", "checkpoint/args.yaml"):
        assert (out / name).is_file(), f"missing {name}"
    recs = read_metrics(out)
    train_recs = [r for r in recs if r["split"] == "train"]
    val_recs = [r for r in recs if r["split"] == "val"]
    assert [r["batch"] for r in train_recs] == [0, 4, 8, 12, 16, 20]
    assert [r["batch"] for r in val_recs] == [0, 8, 16, 23], "validation every 8 batches and at the last"
    for r in recs:
        assert set(r) >= {"batch", "split", "loss", "per", "per_by_day", "blank_fraction", "lr", "seconds"}
        assert isinstance(r["loss"], float) and 0.0 <= r["blank_fraction"] <= 1.0
    for r in train_recs:
        assert r["loss"] == pytest.approx(float(losses[r["batch"]]), rel=1e-6)
    # per-day PER for the two sessions that have validation data (the third is train-only)
    assert set(val_recs[-1]["per_by_day"]) == {"t15.2023.08.13", "t15.2023.08.18"}
    assert res.best_val_per == min(r["per"] for r in val_recs)
    # the learning rate follows the schedule: batch 0 runs at 0 during warm-up
    # (lr_min 1e-4, lr_max 0.01, warm-up 2, decay 40: batch 4 is 2/38 into the cosine)
    r = 1e-4 / 0.01
    assert train_recs[0]["lr"] == 0.0
    assert train_recs[1]["lr"] == pytest.approx(
        0.01 * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * 2 / 38))), rel=1e-9)
    z = np.load(out / "checkpoint/val_logits.npz")  # save_val_logits (official default true)
    assert z["logits"].shape[1] == 41 and z["offsets"][-1] == z["logits"].shape[0]
    assert len(z["ids"]) == 4, "the 4 val trials of the two sessions with a val file"
    ck = torch.load(out / "checkpoint/best_checkpoint", weights_only=False)
    assert {"model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "val_PER",
            "val_loss"} <= set(ck), "official checkpoint keys"
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ck["model_state_dict"])
    assert "day_weights.0" in ck["model_state_dict"]


def test_gradient_clipping(synth_dir, tmp_path):
    tr = Trainer(make_cfg(synth_dir, tmp_path / "a", "grad_norm_clip_value=0.001"), console=False).setup()
    out = tr.train_step(0)
    pre = float(out.grad_norm)
    post = torch.nn.utils.get_total_norm([p.grad for p in tr.model.parameters() if p.grad is not None])
    assert pre > 0.001, "the test needs a gradient norm above the clip value"
    assert float(post) == pytest.approx(0.001, rel=1e-3), f"clipped norm {float(post)} (pre-clip {pre})"

    tr0 = Trainer(make_cfg(synth_dir, tmp_path / "b", "grad_norm_clip_value=0"), console=False).setup()
    out0 = tr0.train_step(0)
    post0 = torch.nn.utils.get_total_norm([p.grad for p in tr0.model.parameters() if p.grad is not None])
    assert float(out0.grad_norm) == pytest.approx(float(post0), rel=1e-6), \
        "without clipping the logged norm is the gradient's norm and the gradient is untouched"
    assert float(out0.grad_norm) == pytest.approx(pre, rel=1e-5), "same batch, same seed, same norm"


def test_output_directory_policy(synth_dir, tmp_path, capsys):
    from fastbci.outputs import OutputError
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    for extra in ((), ("fastbci.overwrite=true",)):  # a file fastbci did not write: never touched
        with pytest.raises(OutputError, match="did not write") as e:
            Trainer(make_cfg(synth_dir, out, *extra), console=False).setup()
        assert "keep.txt" in str(e.value) and "--overwrite does not change this" in str(e.value)
    assert (out / "keep.txt").read_text() == "user data", "never overwritten"

    with pytest.raises(ConfigError, match="no resumable checkpoint"):
        Trainer(make_cfg(synth_dir, tmp_path / "none", "fastbci.resume=true"), console=False).setup()

    # a folder of a run that trained (it holds a checkpoint): the CLI prints the message and
    # exits with status 2, no traceback; fastbci.overwrite=true replaces the run's files only
    trained = tmp_path / "trained"
    assert Trainer(make_cfg(synth_dir, trained, "num_training_batches=2"), console=False).fit().status \
        == "finished"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text((synth_dir / "synth_config.yaml").read_text())
    rc = commands.main(["train", str(cfg_file), f"output_dir={trained}", f"checkpoint_dir={trained}/checkpoint",
                   "fastbci.progress=false"])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds a run" in err and "fastbci.overwrite=true" in err, err
    assert "Traceback" not in err
    Trainer(make_cfg(synth_dir, trained, "fastbci.overwrite=true"), console=False).setup()
    assert not (trained / "checkpoint" / "best_checkpoint").exists()
    assert (trained / "train.log").is_file()
    rc = commands.main(["train", str(cfg_file), "dataset.batch_sise=4"])
    err = capsys.readouterr().err
    assert rc == 2 and "dataset.batch_size" in err, err


def test_collapse_watch_triggers_on_all_blank_outputs(synth_dir, tmp_path):
    cfg = make_cfg(synth_dir, tmp_path / "c", "batches_per_val_step=1", "num_training_batches=8",
                   "lr_warmup_steps=1", "lr_warmup_steps_day=1", "fastbci.collapse_patience=2",
                   "dataset.data_transforms.white_noise_std=0.25",
                   "dataset.data_transforms.constant_offset_std=0.05")
    tr = Trainer(cfg, console=False).setup()
    shift_logits(tr, 0)
    res = tr.fit()
    assert res.status == "collapsed"
    # validations at 0 (inside warm-up: not counted), 1 and 2 -> stop after batch 2
    assert res.last_batch == 2
    assert "white_noise_std" in res.message and "constant_offset_std" in res.message, res.message
    val = [r for r in read_metrics(tmp_path / "c") if r["split"] == "val"]
    assert all(r["blank_fraction"] == 1.0 for r in val)
    assert "Blank collapse" in (tmp_path / "c" / "train.log").read_text()


def test_collapse_watch_quiet_on_a_healthy_run(synth_dir, tmp_path):
    cfg = make_cfg(synth_dir, tmp_path / "h", "batches_per_val_step=1", "num_training_batches=5",
                   "lr_warmup_steps=0", "lr_warmup_steps_day=0", "fastbci.collapse_patience=1")
    tr = Trainer(cfg, console=False).setup()
    shift_logits(tr, 7, when=lambda step, training: not training)  # non-blank outputs at validation
    res = tr.fit()
    assert res.status == "finished", res.message
    assert tr.state.collapse_count == 0


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_loss_is_reported_with_trial_ids(synth_dir, tmp_path, policy):
    out = tmp_path / policy
    cfg = make_cfg(synth_dir, out, f"fastbci.nonfinite_policy={policy}", "num_training_batches=5",
                   "batches_per_val_step=100")
    tr = Trainer(cfg, console=False).setup()
    # poison one training trial: NaN features
    row = int(tr.plan[2][0])
    o = tr.train_store.offsets_np
    tr.train_store.features[o[row]:o[row] + 5] = float("nan")
    bad_batches = [k for k in range(5) if row in set(tr.plan[k].tolist())]
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    res = tr.fit()
    log = (out / "train.log").read_text()
    trial_id = tr.train_store.trial_ids([row])[0]
    st = tr.train_store
    assert trial_id == f"{st.session[row]} block {int(st.block_num_np[row])} trial {int(st.trial_num_np[row])}"
    assert trial_id in log, f"the log must name the poisoned trial ({trial_id}):\n{log}"
    assert "input features hold NaN/inf" in log
    assert f"at batch {bad_batches[0]}" in log
    if policy == "stop":
        assert res.status == "nonfinite" and res.last_batch == bad_batches[0]
        assert NonFiniteError.exit_code == 4
    else:
        assert res.status == "finished"
        assert res.nonfinite_skipped == len(bad_batches)
        losses = res.train_losses
        assert np.isnan(losses[bad_batches]).all() and np.isfinite(np.delete(losses, bad_batches)).all()
        for n, p in tr.model.named_parameters():
            assert torch.isfinite(p).all(), f"{n} became non-finite despite the skip"
        assert any(not torch.equal(before[n], p) for n, p in tr.model.named_parameters())


def test_nonfinite_gradient_with_finite_loss(synth_dir, tmp_path):
    """A gradient overflow with a finite loss is diagnosed as such (every trial listed)."""
    cfg = make_cfg(synth_dir, tmp_path / "g", "num_training_batches=3", "batches_per_val_step=100")
    tr = Trainer(cfg, console=False).setup()

    def hook(grad):
        return grad * float("inf")

    tr.model.h0.register_hook(hook)
    res = tr.fit()
    assert res.status == "nonfinite" and res.last_batch == 0
    assert "non-finite gradient" in res.message and "finite loss" in res.message
    assert res.message.count("block") == 6, "all 6 trials of the batch are listed"


def test_input_lengths_official_formula():
    n = torch.tensor([14, 15, 17, 18, 100, 1025])
    got = patch_input_lengths(n, 14, 4)
    want = torch.tensor([int((v - 14) / 4 + 1) for v in n.tolist()], dtype=torch.int32)
    assert torch.equal(got, want) and got.dtype == torch.int32
    assert torch.equal(patch_input_lengths(n, 0, 0), n.to(torch.int32))


def test_device_selection_falls_back_to_cpu(caplog):
    import logging
    cfg = load_config(None, ["gpu_number=1"])
    log = logging.getLogger("test_device")
    with caplog.at_level(logging.INFO, logger="test_device"):
        dev = select_device(cfg, log)
    if not torch.cuda.is_available():
        assert dev == torch.device("cpu") and "CPU" in caplog.text
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device(load_config(None, ["fastbci.device=cuda"]))
    else:
        assert dev.type == "cuda"


def test_demo_plumbing_on_tiny_data(tmp_path, capsys):
    """python -m fastbci.demo: configs/demo.yaml loads, existing demo data is reused (a tiny
    release with the demo's sessions and width stands in for it), training runs, the PER is
    printed, a rerun replaces the previous demo run, and foreign data is refused."""
    from fastbci import demo
    cfg = load_config(demo.demo_config_path())
    data = tmp_path / "synth-demo"
    synth.write_release(data, **{**demo.demo_release_params(cfg), "n_train": 3, "n_val": 2,
                                 "min_words": 1, "max_words": 2})
    args = ["--out", str(tmp_path / "run"), "--data", str(data), "num_training_batches=2",
            "batches_per_val_step=1", "model.n_units=8", "model.n_layers=1", "model.rnn_dropout=0.0",
            "dataset.batch_size=4", "fastbci.progress=false", "fastbci.plot=false"]
    assert commands.main(["demo", *args]) == 0
    assert "Final validation PER" in capsys.readouterr().out
    assert commands.main(["demo", *args]) == 0, "a second demo run replaces the first"
    other = tmp_path / "other"
    synth.write_release(other, sessions=("t15.2023.08.13",), n_train=2, n_val=1, n_test=0,
                        neural_dim=16, seed=0)
    assert commands.main(["demo", "--out", str(tmp_path / "run2"), "--data", str(other)]) == 2
    assert "does not match the demo configuration" in capsys.readouterr().err
    older = tmp_path / "older"  # the demo's sessions and width, an earlier template strength
    synth.write_release(older, **{**demo.demo_release_params(cfg), "n_train": 2, "n_val": 1,
                                  "signal": 2.0})
    assert commands.main(["demo", "--out", str(tmp_path / "run3"), "--data", str(older)]) == 2
    err = capsys.readouterr().err
    assert "signal 2.0 (the demo's 3.0)" in err and "Delete it" in err and "Traceback" not in err
    (older / synth.PARAMS_FILE).unlink()  # a release written before the parameters were recorded
    assert commands.main(["demo", "--out", str(tmp_path / "run3"), "--data", str(older)]) == 2
    assert "no record of its generation parameters" in capsys.readouterr().err


def test_demo_says_in_plain_words_when_a_run_ends_before_it_learned():
    """A demo run that ends on the blank plateau (or still falling) says so and what to do; a
    run that learned says nothing more."""
    from fastbci import demo
    rec = lambda per, blank=0.6: {"per": per, "blank_fraction": blank}  # noqa: E731
    assert demo.ending_advice([rec(0.9), rec(0.05)], 400) is None
    assert demo.ending_advice([rec(0.15)], 400) is None
    plateau = demo.ending_advice([rec(0.1), rec(0.88, 0.87)], 400)
    assert plateau.startswith("This run ended on the blank plateau: its validation PER is 88% "
                              "and 87% of its output frames are blank")
    assert "num_training_batches=800 lr_decay_steps=800 lr_decay_steps_day=800" in plateau
    assert "seed=2 dataset.seed=2" in plateau and "fastbci doctor" in plateau
    late = demo.ending_advice([rec(0.3)], 800, ["seed=3", "dataset.seed=3"])
    assert late.startswith("This run left the blank plateau late: its validation PER is 30%")
    assert "num_training_batches=1600" in late and "seed=2" not in late
    assert demo.ending_advice([{"per": None, "blank_fraction": float("nan")}], 400) is None


@pytest.mark.slow
def test_demo_leaves_the_plateau_on_the_seed_that_stayed_there(tmp_path):
    """configs/demo.yaml on the demo's own data with seed 23, the run that stayed on the
    blank/SIL plateau (validation PER 89.6% from batch 100 to the end) before the demo started
    on blank (fastbci.init_blank_bias 3): 100 batches now reach a validation PER below 20%."""
    from fastbci import demo
    cfg = load_config(demo.demo_config_path())
    data = tmp_path / "synth-demo"
    synth.write_release(data, **demo.demo_release_params(cfg))
    out = tmp_path / "run"
    res = Trainer(load_config(demo.demo_config_path(), [
        f"dataset.dataset_dir={data}", f"output_dir={out}", f"checkpoint_dir={out}/checkpoint",
        "seed=23", "dataset.seed=23", "num_training_batches=100", "fastbci.progress=false",
        "fastbci.plot=false"]), console=False).fit()
    assert res.status == "finished", res.message
    per = res.val_history[-1]["per"]
    assert per < 0.2, f"seed 23 is on the plateau again: validation PER {per:.1%} at batch 100"


def test_fused_data_path_matches_reference(synth_dir, tmp_path):
    """impl=fused (Triton augment + day projection + patchify; the interpreter on a CPU) trains
    to the same losses and PER as impl=reference with the same Philox streams."""
    from fastbci.ops._triton import interpreted
    if not interpreted():  # a CUDA machine: tests/test_fused_step.py compares the paths there
        pytest.skip("impl=fused on fastbci.device=cpu runs only under the Triton interpreter, "
                    "which tests/conftest.py turns on only on machines without CUDA")
    runs = {}
    for impl in ("reference", "fused"):
        cfg = make_cfg(synth_dir, tmp_path / impl, f"fastbci.impl={impl}", "num_training_batches=3",
                       "batches_per_val_step=2", "dataset.batch_size=4")
        runs[impl] = Trainer(cfg, console=False).fit()
        assert runs[impl].status == "finished", runs[impl].message
    ref, fus = runs["reference"], runs["fused"]
    np.testing.assert_allclose(fus.train_losses, ref.train_losses, rtol=1e-5,
                               err_msg="fused vs reference training losses")
    for a, b in zip(fus.val_history, ref.val_history):
        assert a["per"] == b["per"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_save_all_val_steps_final_model_and_early_stopping(synth_dir, tmp_path):
    """Official keys that crash the official trainer (too few arguments) work here, and early
    stopping ends the run once the PER stops improving."""
    out = tmp_path / "es"
    cfg = make_cfg(synth_dir, out, "save_all_val_steps=true", "save_final_model=true",
                   "early_stopping=true", "early_stopping_val_steps=2", "batches_per_val_step=1",
                   "num_training_batches=8", "fastbci.collapse_watch=false")
    tr = Trainer(cfg, console=False).setup()
    shift_logits(tr, 7, when=lambda step, training: not training, replace=True)  # no improvement
    res = tr.fit()
    assert res.status == "early_stopped" and res.last_batch == 2, res
    ck = out / "checkpoint"
    for k in range(3):
        c = torch.load(ck / f"checkpoint_batch_{k}", weights_only=False)
        assert c["val_PER"] == res.val_history[k]["per"]
    final = torch.load(ck / "final_checkpoint_batch_2", weights_only=False)
    assert final["val_PER"] == res.val_history[-1]["per"] and "model_state_dict" in final


def test_sigint_stops_after_the_batch_with_a_resumable_checkpoint(synth_dir, tmp_path):
    import os
    import signal
    out = tmp_path / "sig"
    # the handler in force before the run (SIG_IGN when the test runs as a background job, as
    # in CI; Python's default_int_handler in a terminal): the trainer must put it back
    before = signal.getsignal(signal.SIGINT)
    tr = Trainer(make_cfg(synth_dir, out, "batches_per_val_step=100"), console=False).setup()
    real_step = tr.parts.step

    def step(k, rows, stop_request):
        r = real_step(k, rows, stop_request)
        if k == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during batch 1
        return r

    tr.parts.step = step
    res = tr.fit()
    assert res.status == "interrupted" and res.last_batch == 1
    assert "fastbci.resume=true" in res.message
    assert signal.getsignal(signal.SIGINT) is before, "the SIGINT handler in force before is restored"
    from fastbci import checkpoint as ckpt_io
    st = ckpt_io.resume_state_of(ckpt_io.load(out / "checkpoint" / ckpt_io.RESUME_NAME), "x")
    assert st["next_batch"] == 2


def test_rng_torch_reproduces_an_official_style_loop(synth_dir, tmp_path):
    """fastbci.rng=torch: the trainer's losses equal those of a loop written the way the official
    trainer runs (docs/recipe.md section 2, s5; official seeding order, its DataLoader iterators' base-seed
    draws), built from the official-compatible pieces (fastbci.compat)."""
    import random

    from fastbci.compat.dataset import BrainToTextDataset, train_test_split_indicies
    from fastbci.compat.model import GRUDecoder
    from fastbci.compat.transforms import transform_data

    n_batches = 3
    cfg = make_cfg(synth_dir, tmp_path / "t", "fastbci.rng=torch", f"num_training_batches={n_batches}",
                   "model.n_layers=2", "model.rnn_dropout=0.3", "batches_per_val_step=100")
    res = Trainer(cfg, console=False).fit()

    ds, m = cfg["dataset"], cfg["model"]
    np.random.seed(cfg["seed"]); random.seed(cfg["seed"]); torch.manual_seed(cfg["seed"])
    model = GRUDecoder(m["n_input_features"], m["n_units"], len(ds["sessions"]), ds["n_classes"],
                       m["rnn_dropout"], m["input_network"]["input_layer_dropout"], m["n_layers"],
                       m["patch_size"], m["patch_stride"])
    paths = [str(synth_dir / s / f"data_{sp}.hdf5") for sp in ("train", "val") for s in ds["sessions"]]
    train_trials, _ = train_test_split_indicies(paths[:3], test_percentage=0, seed=ds["seed"])
    _, val_trials = train_test_split_indicies(paths[3:], test_percentage=1, seed=ds["seed"])
    train_ds = BrainToTextDataset(train_trials, n_batches, "train", ds["batch_size"], ds["days_per_batch"],
                                  random_seed=ds["seed"])
    BrainToTextDataset(val_trials, None, "test", ds["batch_size"], None, random_seed=ds["seed"])
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if "gru.bias" in n or "out.bias" in n], "weight_decay": 0},
        {"params": [p for n, p in named if "day_" in n], "lr": cfg["lr_max_day"],
         "weight_decay": cfg["weight_decay_day"]},
        {"params": [p for n, p in named if "day_" not in n and "gru.bias" not in n and "out.bias" not in n]},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg["lr_max"], betas=(cfg["beta0"], cfg["beta1"]),
                            eps=cfg["epsilon"], weight_decay=cfg["weight_decay"])

    def mult(s, lo, hi, warm, decay):
        if s < warm:
            return s / warm
        if s < decay:
            r = lo / hi
            return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * (s - warm) / (decay - warm)))
        return lo / hi

    sched = torch.optim.lr_scheduler.LambdaLR(opt, [
        lambda s: mult(s, cfg["lr_min"], cfg["lr_max"], cfg["lr_warmup_steps"], cfg["lr_decay_steps"]),
        lambda s: mult(s, cfg["lr_min_day"], cfg["lr_max_day"], cfg["lr_warmup_steps_day"], cfg["lr_decay_steps_day"]),
        lambda s: mult(s, cfg["lr_min"], cfg["lr_max"], cfg["lr_warmup_steps"], cfg["lr_decay_steps"])])
    torch.empty((), dtype=torch.int64).random_()  # the train DataLoader iterator's base seed
    losses = []
    for i in range(n_batches):
        batch = train_ds[i]
        model.train()
        opt.zero_grad()
        x, n = transform_data(batch["input_features"], batch["n_time_steps"], ds["data_transforms"], "train")
        lens = ((n - m["patch_size"]) / m["patch_stride"] + 1).to(torch.int32)
        logits = model(x, batch["day_indicies"])
        loss = torch.nn.functional.ctc_loss(logits.log_softmax(2).permute(1, 0, 2), batch["seq_class_ids"],
                                            lens, batch["phone_seq_lens"], blank=0, reduction="none",
                                            zero_infinity=False).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_norm_clip_value"], error_if_nonfinite=True)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if i == 0 or i == n_batches - 1:
            torch.empty((), dtype=torch.int64).random_()  # validation: the val iterator's base seed
    np.testing.assert_allclose(res.train_losses, np.array(losses, dtype=np.float32), rtol=2e-6,
                               err_msg="trainer (rng=torch) vs official-style loop")
