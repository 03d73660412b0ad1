"""Nothing lost, nothing run from a file, every failure explained: the trainer under faults
(crafted checkpoints, kills during rewrites, full disks, bad values, failed starts) and what a
new user sees."""
import errno
import io
import json
import os
import signal

import numpy as np
import pytest
import torch

from fastbci import checkpoint as ckpt_io
from fastbci import commands, fileio, outputs, synth
from fastbci.config import ConfigError, load_config
from fastbci.training import Trainer
from helpers import shift_logits
from fastbci.training.metrics_log import MetricsLog
from fastbci.training.step import TrainStep
from fastbci.training.report import LineProgress, plot_curves, progress_bar


@pytest.fixture(scope="module")
def release(small_release):
    return small_release


BASE = ["model.n_units=8", "model.n_layers=1", "model.rnn_dropout=0.0", "dataset.batch_size=4",
        "dataset.days_per_batch=2", "num_training_batches=4", "batches_per_train_log=1",
        "batches_per_val_step=2", "lr_warmup_steps=1", "lr_warmup_steps_day=1",
        "fastbci.impl=reference", "fastbci.device=cpu", "fastbci.progress=false",
        "fastbci.plot=false"]


def overrides(out, *extra):
    return [f"output_dir={out}", f"checkpoint_dir={out}/checkpoint", *BASE, *extra]


def cfg_of(release, out, *extra):
    return load_config(release / "synth_config.yaml", overrides(out, *extra))


def run_cli(release, out, *extra):
    return commands.main(["train", str(release / "synth_config.yaml"), *overrides(out, *extra)])


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- 1. loading a checkpoint runs no code -------------------------------------------------------
def test_resume_and_init_from_a_crafted_checkpoint_run_nothing(release, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    torch.save({"model_state_dict": {}, "fastbci": {"next_batch": _Evil(marker)}}, evil)
    for extra in ([f"fastbci.resume={evil}"], ["init_from_checkpoint=true",
                                              f"init_checkpoint_path={evil}"]):
        assert run_cli(release, tmp_path / "r", *extra) == 2
        err = capsys.readouterr().err
        assert "arbitrary unpickling" in err and "fastbci.trust_checkpoint=true" in err, err
        assert "Traceback" not in err
    assert not marker.exists(), "the crafted checkpoint ran its payload"


# -- 2. rewrites are atomic; stale temporaries are removed ---------------------------------------
def test_a_kill_during_the_metrics_rewrite_keeps_every_record(tmp_path, monkeypatch):
    m = MetricsLog(tmp_path / "metrics.jsonl")
    for k in range(12):
        m.append({"batch": k, "split": "train", "loss": 1.0})
    before = m.path.read_text()
    real_open = open

    def dying_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if "w" in mode and str(path).endswith(f".tmp{os.getpid()}"):
            f.write('{"batch": 0')   # half a record, then the kill
            f.close()
            raise KeyboardInterrupt
        return f

    monkeypatch.setattr("builtins.open", dying_open)
    with pytest.raises(KeyboardInterrupt):
        m.truncate(5)
    monkeypatch.undo()
    assert m.path.read_text() == before, "the rewrite lost records"
    assert [p.name for p in tmp_path.iterdir() if p.name != outputs.MARKER] == ["metrics.jsonl"]
    m.truncate(5)
    assert [r["batch"] for r in m.records()] == [0, 1, 2, 3, 4]


def test_stale_temporaries_of_killed_saves_are_removed_at_start(release, tmp_path):
    out = tmp_path / "run"
    assert Trainer(cfg_of(release, out), console=False).fit().status == "finished"
    stale = out / "checkpoint" / ".resume_checkpoint.tmp999999999"
    stale.write_bytes(b"half a checkpoint")
    Trainer(cfg_of(release, out, "fastbci.resume=true", "num_training_batches=5"),
            console=False).fit()
    assert not stale.exists()
    assert "left by an interrupted write" in (out / "train.log").read_text()


# -- 4. a full disk ------------------------------------------------------------------------------
def test_a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(release, tmp_path,
                                                                        monkeypatch, capsys):
    out = tmp_path / "full"
    assert run_cli(release, out, "num_training_batches=3", "batches_per_val_step=1") == 0
    cks = [out / "checkpoint" / n for n in (ckpt_io.RESUME_NAME, ckpt_io.BEST_NAME)]
    before = [c.read_bytes() for c in cks]
    real_save = torch.save

    def no_space(obj, f, *a, **k):
        if str(f).endswith(f".tmp{os.getpid()}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", no_space)
    rc = run_cli(release, out, "num_training_batches=6", "batches_per_val_step=1",
                 "fastbci.resume=true")
    err = capsys.readouterr().err
    assert rc == 2 and "no space left on" in err and "_checkpoint" in err, err
    assert "Traceback" not in err
    assert [c.read_bytes() for c in cks] == before, "a previous checkpoint was damaged"


def test_a_full_disk_stops_the_log_file_with_one_line(tmp_path, capsys):
    from fastbci.training.report import make_logger

    class Full(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    log = make_logger(tmp_path / "train.log", console=False)
    log.handlers[0].stream = Full()
    for i in range(3):
        log.info(f"message {i}")
    err = capsys.readouterr().err
    assert err.count("no space left") == 1 and "Logging error" not in err, err


# -- 6. JSON files hold standard JSON -------------------------------------------------------------
def test_non_finite_values_are_written_as_null(tmp_path):
    m = MetricsLog(tmp_path / "m.jsonl")
    m.append({"batch": 0, "loss": float("inf"), "blank_fraction": float("nan"), "per": 0.5})
    text = m.path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"batch": 0, "loss": None, "blank_fraction": None, "per": 0.5}


# -- 7. values the optimiser rejects --------------------------------------------------------------
@pytest.mark.parametrize("override,key", [("lr_max=-1", "lr_max"), ("beta0=2", "beta0"),
                                          ("epsilon=-1", "epsilon"), ("weight_decay=-1", "weight_decay"),
                                          ("beta1=1.0", "beta1"), ("lr_max_day=0", "lr_max_day"),
                                          ("lr_warmup_steps=-5", "lr_warmup_steps")])
def test_optimiser_values_are_checked_with_their_range(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'.*(range|must)"):
        load_config(None, [override])


# -- 8, 11, 12. output folder and data problems before anything is created ------------------------
def test_output_dir_that_is_a_file(release, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert run_cli(release, f) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err


def test_a_failed_first_start_does_not_block_the_retry(release, tmp_path, capsys):
    out = tmp_path / "first"
    assert run_cli(release, out, f"dataset.dataset_dir={tmp_path / 'nowhere'}") == 2
    err = capsys.readouterr().err
    assert "hdf5_data_final" in err and "dataset.dataset_dir=" in err and "fastbci synth" in err
    assert not out.exists(), "a failed start created the output folder"
    # a start that failed after creating its files (e.g. killed in setup) leaves only leftovers:
    out.mkdir()
    (out / "train.log").write_text("an earlier start\n")
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "args.yaml").write_text("{}\n")
    for f in (out / "train.log", out / "checkpoint" / "args.yaml"):  # as fastbci records them
        outputs.record(f)
    assert run_cli(release, out) == 0, capsys.readouterr().err
    assert "an earlier start" not in (out / "train.log").read_text()
    assert "Reusing" in (out / "train.log").read_text()


def test_data_is_checked_before_the_model_is_built(release, tmp_path, monkeypatch):
    from fastbci import model
    built = []
    monkeypatch.setattr(model.GRUDecoder, "from_config",
                        classmethod(lambda cls, *a, **k: built.append(1)))
    (tmp_path / "data").mkdir()
    with pytest.raises(Exception, match="hdf5_data_final"):
        Trainer(cfg_of(release, tmp_path / "x", f"dataset.dataset_dir={tmp_path / 'data'}"),
                console=False).setup()
    assert not built


# -- 9. a validation day without a file -----------------------------------------------------------
def test_a_val_day_without_a_file_is_logged(release, tmp_path):
    out = tmp_path / "v"
    cfg = cfg_of(release, out)
    days = [d for d, s in enumerate(cfg["dataset"]["sessions"])
            if not (release / s / "data_val.hdf5").exists()]
    assert days, "the small release has a train-only session"
    cfg["dataset"]["dataset_probability_val"][days[0]] = 1
    Trainer(cfg, console=False).setup()
    assert (f"Day {days[0]} ({cfg['dataset']['sessions'][days[0]]}) has dataset_probability_val 1 "
            "but no data_val.hdf5") in (out / "train.log").read_text()


# -- 14, 15. the doctor's words, at the start and at a collapse -----------------------------------
def test_weak_settings_warn_at_start(release, tmp_path):
    out = tmp_path / "weak"
    Trainer(cfg_of(release, out, "lr_max=0.002", "dataset.data_transforms.white_noise_std=0.25",
                   "lr_warmup_steps=10"), console=False).setup()
    log = (out / "train.log").read_text()
    assert "Configuration risk: lr_max" in log and "Configuration risk: dataset.data_transforms" in log
    assert log.count("Why blank collapse") == 1, "the mechanism is stated once"
    assert "lr_warmup_steps = 10 is not shorter than the run" in log
    assert "RECIPE" not in log


def test_collapse_watch_acts_during_a_warm_up_at_100_percent_blank(release, tmp_path):
    out = tmp_path / "c"
    tr = Trainer(cfg_of(release, out, "num_training_batches=8", "batches_per_val_step=1",
                        "lr_warmup_steps=100", "lr_warmup_steps_day=100",
                        "fastbci.collapse_warmup_patience=3"), console=False).setup()
    shift_logits(tr, 0, amount=100.0, replace=True)  # 100% blank outputs
    res = tr.fit()
    assert res.status == "collapsed" and res.last_batch == 2, res
    assert "during warm-up" in res.message and res.message.count("Why blank collapse") == 1


# -- 16. progress off a terminal, the curves ------------------------------------------------------
def test_progress_is_a_line_every_n_batches_off_a_terminal():
    buf = io.StringIO()
    bar = progress_bar(True, 1000, 0, stream=buf)
    assert isinstance(bar, LineProgress) and bar.every == 10
    for _ in range(25):
        bar.set_postfix(loss="1.234")
        bar.update(1)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("[train] batch 20/1000 (2.0%)") \
        and "loss 1.234" in lines[1], lines


def _line(fig, label):
    found = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, f"{label!r}: {len(found)} lines in the figure"
    return found[0]


def test_curves_show_the_learning_rate_and_blank_fraction(tmp_path):
    """The figure draws what the records hold: the learning rate and the blank fraction of the
    train logs, the validation blank fraction, PER and loss, the per-batch losses, the title;
    and the PNG is an image of the figure's size."""
    pytest.importorskip("matplotlib")
    import matplotlib.image
    import matplotlib.pyplot as plt

    from fastbci.training.report import curves_figure
    recs = [{"batch": k, "split": "train", "loss": 2.0 - k / 10, "lr": k / 100,
             "blank_fraction": 0.9 - k / 20} for k in range(10)]
    recs += [{"batch": 9, "split": "val", "loss": 1.5, "per": 0.5, "blank_fraction": 0.4}]
    losses = np.linspace(2, 1, 10, dtype=np.float32)
    fig = curves_figure(recs, losses, title="run: finished")
    try:
        lr = _line(fig, "learning rate")
        np.testing.assert_allclose(lr.get_xdata(), np.arange(10))
        np.testing.assert_allclose(lr.get_ydata(), [k / 100 for k in range(10)])
        np.testing.assert_allclose(_line(fig, "blank fraction (train)").get_ydata(),
                                   [0.9 - k / 20 for k in range(10)])
        assert list(_line(fig, "blank fraction (validation)").get_ydata()) == [0.4]
        assert list(_line(fig, "validation PER").get_ydata()) == [50.0]
        assert list(_line(fig, "validation").get_ydata()) == [1.5]
        np.testing.assert_allclose(_line(fig, "train (batch)").get_ydata(), losses)
        assert fig._suptitle.get_text() == "run: finished"
        width, height = fig.get_size_inches() * 110
    finally:
        plt.close(fig)
    png = plot_curves(recs, tmp_path / "c.png", losses, title="run: finished")
    image = matplotlib.image.imread(png)
    assert image.shape[:2] == (round(height), round(width))
    assert image[..., :3].std() > 0.05, "the PNG is blank"
    assert plot_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_fileio_helpers(tmp_path):
    p = tmp_path / "a.txt"
    fileio.atomic_write_text(p, "one\n")
    assert p.read_text() == "one\n"
    err = fileio.storage_error(OSError(errno.ENOSPC, "x"), p)
    assert isinstance(err, fileio.StorageError) and "no space left on" in str(err)
    assert fileio.storage_error(ValueError("x"), p) is None


# -- 13. the demo rerun -----------------------------------------------------------------------------
def test_demo_rerun_resumes_an_interrupted_run_and_replaces_a_finished_one(tmp_path, capsys,
                                                                           monkeypatch):
    from fastbci import demo
    cfg = load_config(demo.demo_config_path())
    data = tmp_path / "synth-demo"
    synth.write_release(data, **{**demo.demo_release_params(cfg), "n_train": 3, "n_val": 2,
                                 "min_words": 1, "max_words": 2})
    args = ["--out", str(tmp_path / "run"), "--data", str(data), "num_training_batches=4",
            "batches_per_val_step=100", "fastbci.checkpoint_every=1", "model.n_units=8",
            "model.n_layers=1", "model.rnn_dropout=0.0", "dataset.batch_size=4",
            "fastbci.progress=false", "fastbci.plot=false"]
    monkeypatch.setattr(demo, "words_wer", lambda *a, **k: None)
    real_step = TrainStep.__call__

    def ctrl_c_at_2(self, k, rows, stop_request):
        if k == 2:  # a real Ctrl-C: the run's handler asks to stop after this batch
            signal.raise_signal(signal.SIGINT)
            stop_request = True
        return real_step(self, k, rows, stop_request)

    monkeypatch.setattr(TrainStep, "__call__", ctrl_c_at_2)
    assert commands.main(["demo", *args]) == 130
    out = capsys.readouterr()
    assert "Final validation PER" not in out.out and "run the same command again" in out.out
    assert "fastbci demo --out" in (tmp_path / "run" / "train.log").read_text()
    monkeypatch.setattr(TrainStep, "__call__", real_step)
    assert commands.main(["demo", *args]) == 0
    out = capsys.readouterr()
    assert "Resuming the unfinished demo run" in out.err, out.err
    assert "Resumed from" in (tmp_path / "run" / "train.log").read_text()
    assert commands.main(["demo", *args]) == 0
    assert "Replacing the previous demo run" in capsys.readouterr().err


# -- 10, 16. evaluate: the configuration it uses, its help ------------------------------------------
def test_evaluate_prefers_the_checkpoint_configuration_over_an_empty_args_yaml(release, tmp_path,
                                                                               capsys):
    from fastbci import evaluation as E
    out = tmp_path / "ev"
    assert Trainer(cfg_of(release, out), console=False).fit().status == "finished"
    (out / "checkpoint" / "args.yaml").write_text("")
    s = E.evaluate(out / "checkpoint" / "best_checkpoint", "val", out_dir=tmp_path / "o")
    assert s["config"].startswith("the configuration stored in"), s["config"]
    assert "config: the configuration stored in" in capsys.readouterr().err
    # an official checkpoint (no stored configuration) beside an empty args.yaml: a clear error
    off = tmp_path / "off" / "checkpoint"
    off.mkdir(parents=True)
    ck = ckpt_io.load(out / "checkpoint" / "best_checkpoint")
    torch.save({"model_state_dict": ck["model_state_dict"]}, off / "best_checkpoint")
    (off / "args.yaml").write_text("")
    assert commands.main(["evaluate", "--checkpoint", str(off / "best_checkpoint"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is empty" in err and "--config" in err and "Traceback" not in err


def test_help_texts_document_every_option(capsys):
    assert commands.main(["evaluate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("--split {val,test} val: score PER", "--quiet no progress",
                   "--trust-checkpoint", "Exit status: 0 done, 2 bad input"):
        assert needle in text, needle


def test_synth_help_says_what_the_defaults_and_counts_are(capsys):
    assert commands.main(["synth", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Without a preset: the 45 official sessions with 20 train, 5 val and 5 test" in text
    assert "train trials per session" in text and "--preset" not in text


def test_no_user_facing_text_cites_an_internal_document():
    """Users have docs/recipe.md, not the team's internal notes."""
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    offenders = [str(f.relative_to(root)) for d in ("fastbci", "kernels", "docs", "configs", "scripts")
                 for f in (root / d).rglob("*") if f.is_file() and f.suffix in (".py", ".md", ".yaml", ".sh")
                 and ("RECIPE.md" in f.read_text() or "DESIGN.md" in f.read_text())]
    assert not offenders, offenders
    assert (root / "docs" / "recipe.md").is_file()


def test_the_doctor_states_the_collapse_mechanism_once_with_what_to_do():
    from fastbci.doctor import assess, format_findings
    cfg = load_config(None, ["lr_max=0.002", "dataset.data_transforms.white_noise_std=0.25",
                             "dataset.data_transforms.constant_offset_std=0.05", "lr_warmup_steps=2000"])
    text = format_findings(assess(cfg))
    assert text.count("Why blank collapse") == 1 and text.count("reported to end 100% blank") == 1
    assert "restore 0.005" in text and "restore 1.0" in text and "docs/recipe.md section 8" in text


def test_the_store_load_shows_no_bar_off_a_terminal(release, capsys):
    from fastbci.data import TrialStore
    TrialStore.from_config(load_config(release / "synth_config.yaml"), "train", progress=True)
    assert "loading train" not in capsys.readouterr().err
