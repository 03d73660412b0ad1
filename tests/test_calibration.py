"""python -m fastbci.calibrate: a new day layer from a few sentences, everything else frozen."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fastbci import calibration as C
from fastbci import checkpoint as ckpt_io
from fastbci import evaluation as E
from fastbci.commands import main as fastbci
from fastbci import synth
from fastbci.compat import GRUDecoder as CompatGRUDecoder
from fastbci.config import load_config
from fastbci.data.t15 import Trial, read_session_file, write_session_file
from fastbci.training import Trainer

SESSIONS = ("t15.2023.08.13", "t15.2023.08.18", "t15.2023.08.20", "t15.2023.08.25")
NEW = SESSIONS[-1]
DIM = 24


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for 3 batches on the first three sessions of a release whose fourth
    session is held out (``--holdout 1``)."""
    root = tmp_path_factory.mktemp("cal")
    data = root / "data"
    summ = synth.write_release(data, sessions=SESSIONS, n_train=14, n_val=6, n_test=3,
                               neural_dim=DIM, min_words=1, max_words=2, block_size=(2, 4),
                               seed=5, holdout=1, train_only=())
    assert summ["holdout"] == [NEW]
    out = root / "run"
    cfg = load_config(data / "synth_config.yaml", [
        f"output_dir={out}", f"checkpoint_dir={out}/checkpoint", "model.n_units=12",
        "model.n_layers=1", "model.rnn_dropout=0.0", "dataset.batch_size=4",
        "dataset.days_per_batch=2", "num_training_batches=3", "batches_per_val_step=100",
        "lr_warmup_steps=0", "lr_warmup_steps_day=0", "fastbci.impl=reference",
        "fastbci.device=cpu", "fastbci.progress=false", "fastbci.plot=false"])
    assert cfg["dataset"]["sessions"] == list(SESSIONS[:-1])
    res = Trainer(cfg, console=False).fit()
    assert res.status == "finished"
    return {"root": root, "data": data, "cfg": cfg,
            "ckpt": out / "checkpoint" / "best_checkpoint",
            "train": data / NEW / "data_train.hdf5", "val": data / NEW / "data_val.hdf5"}


def _calibrate(trained, out, *extra, session=None):
    argv = ["--checkpoint", str(trained["ckpt"]), "--session", str(session or trained["train"]),
            "--out", str(out), "--quiet", *extra]
    return fastbci(["calibrate", *argv])


def _weights(path):
    return ckpt_io.load(path)["model_state_dict"]


@pytest.fixture(scope="module")
def calibrated(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated")
    assert _calibrate(trained, out, "--sentences", "12", "--steps", "6", "--val",
                      str(trained["val"])) == 0
    return out


def test_holdout_session_is_written_but_not_listed(trained):
    data = trained["data"]
    assert trained["train"].is_file() and trained["val"].is_file()
    listed = yaml.safe_load(open(data / "synth_config.yaml"))["dataset"]["sessions"]
    assert NEW not in listed and len(listed) == 3
    corpus = set((data / synth.CORPUS_FILE).read_text().splitlines())
    held = {t.sentence_label for t in read_session_file(trained["train"], "train")}
    others = {t.sentence_label for s in SESSIONS[:-1]
              for t in read_session_file(data / s / "data_train.hdf5", "train")}
    assert held - others, "the held-out session needs sentences of its own for this check"
    assert not (held - others) & corpus, "a held-out sentence reached the train corpus"


@pytest.mark.parametrize("bad", [-1, 4, True, 1.5])
def test_holdout_out_of_range_is_an_error(tmp_path, bad):
    with pytest.raises(ValueError, match="holdout"):
        synth.write_release(tmp_path, sessions=SESSIONS, n_train=1, n_val=1, n_test=1,
                            neural_dim=8, holdout=bad)


def test_only_the_new_layer_changes(trained, calibrated):
    before, after = _weights(trained["ckpt"]), _weights(calibrated / C.CHECKPOINT_NAME)
    new = {"day_weights.3", "day_biases.3"}
    assert set(after) == set(before) | new
    for k, v in before.items():  # every parameter and buffer of the trained model, bitwise
        assert torch.equal(after[k], v), k
    report = json.loads((calibrated / C.REPORT_NAME).read_text())
    init = report["init_day"]
    assert init in (0, 1, 2) and report["init_session"] == SESSIONS[init]
    assert report["steps"] == 6 and report["n_sentences"] == 12
    # the new layer moved away from the layer it started from
    assert not torch.equal(after["day_weights.3"], before[f"day_weights.{init}"])
    for key in ("init_day", "n_sentences", "steps", "seconds", "per_before", "per_after"):
        assert report[key] is not None, key
    assert report["eval_on"].startswith("--val")


def test_the_report_says_what_stands_in_without_val(trained, tmp_path):
    assert _calibrate(trained, tmp_path, "--sentences", "12", "--steps", "2") == 0
    report = json.loads((tmp_path / C.REPORT_NAME).read_text())
    assert report["n_heldout"] >= 2 and report["n_train"] + report["n_heldout"] == 12
    assert "held-out part" in report["eval_on"]
    assert report["per_before"] is not None and report["per_after"] is not None


def test_summary_line_on_stdout(trained, tmp_path, capsys):
    assert _calibrate(trained, tmp_path, "--sentences", "4", "--steps", "1") == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"calibrated {NEW} as day 3") and "4 sentences" in line and "PER" in line


def test_checkpoint_round_trips_through_evaluate(trained, calibrated, tmp_path):
    report = json.loads((calibrated / C.REPORT_NAME).read_text())
    ck = ckpt_io.load(calibrated / C.CHECKPOINT_NAME)
    assert ck["fastbci"]["config"]["dataset"]["sessions"] == list(SESSIONS)
    assert ck["fastbci"]["calibration"]["session"] == NEW
    # the whole val split of the four sessions; the new day scored on its val file alone
    summary = E.evaluate(calibrated / C.CHECKPOINT_NAME, "val", out_dir=tmp_path / "ev", quiet=True)
    assert summary["per_by_day"][NEW] == pytest.approx(report["per_after"], abs=1e-12)
    assert set(summary["per_by_day"]) == set(SESSIONS)


def test_checkpoint_initialises_a_training_run(trained, calibrated, tmp_path):
    ck = ckpt_io.load(calibrated / C.CHECKPOINT_NAME)
    cfg = dict(ck["fastbci"]["config"])
    cfg.update(output_dir=str(tmp_path / "run"), checkpoint_dir=str(tmp_path / "run" / "ck"),
               init_from_checkpoint=True,
               init_checkpoint_path=str(calibrated / C.CHECKPOINT_NAME))
    tr = Trainer(cfg, console=False)
    tr.setup()
    got = tr.model.official_state_dict()
    for k, v in ck["model_state_dict"].items():
        assert torch.equal(got[k].cpu(), v), k


def test_checkpoint_loads_into_the_compat_model(trained, calibrated):
    ck = ckpt_io.load(calibrated / C.CHECKPOINT_NAME)
    m = ck["fastbci"]["config"]["model"]
    model = CompatGRUDecoder(neural_dim=DIM, n_units=m["n_units"], n_days=4, n_classes=41,
                             n_layers=m["n_layers"], patch_size=m["patch_size"],
                             patch_stride=m["patch_stride"])
    model.load_state_dict(ck["model_state_dict"])
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 40, DIM), torch.tensor([3]))
    assert out.shape[-1] == 41 and torch.isfinite(out).all()


def test_same_seed_same_layer(trained, tmp_path):
    layers = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert _calibrate(trained, tmp_path / name, "--sentences", "6", "--steps", "3",
                          "--seed", str(seed), "--init-day", "1") == 0
        layers.append(_weights(tmp_path / name / C.CHECKPOINT_NAME)["day_weights.3"])
    assert torch.equal(layers[0], layers[1])
    assert not torch.equal(layers[0], layers[2]), "the seed must matter (augmentation, order)"


def test_unlabelled_reports_kept_trials_per_round(trained, tmp_path):
    assert _calibrate(trained, tmp_path, "--unlabelled", "--rounds", "2", "--keep", "0.5",
                      "--steps", "4") == 0
    report = json.loads((tmp_path / C.REPORT_NAME).read_text())
    assert report["unlabelled"] and len(report["rounds"]) == 2
    for r in report["rounds"]:
        assert 1 <= r["kept"] <= r["of"] == 14
    # scored against the labels the unlabelled training never saw
    assert "own labels" in report["eval_on"] and report["per_after"] is not None
    before, after = _weights(trained["ckpt"]), _weights(tmp_path / C.CHECKPOINT_NAME)
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def _rewrite(src: Path, dst: Path, *, width=None, length=None):
    """A copy of session file ``src`` with other feature widths or trial lengths."""
    trials = read_session_file(src, "train")
    out = []
    for t in trials:
        x = t.input_features
        if width is not None:
            x = np.resize(x, (x.shape[0], width)).astype(np.float32)
        if length is not None:
            x = x[:length]
        out.append(Trial(x, t.block_num, t.trial_num, t.session, t.seq_class_ids, t.transcription,
                         t.seq_len, t.sentence_label))
    return write_session_file(dst, out, "train")


def _error(trained, capsys, out, *extra, session=None):
    code = _calibrate(trained, out, *extra, session=session)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_other_channel_count_is_exit_2_naming_the_file(trained, tmp_path, capsys):
    bad = _rewrite(trained["train"], tmp_path / "t15.2099.01.01" / "data_train.hdf5", width=DIM + 8)
    code, err = _error(trained, capsys, tmp_path / "o", session=bad)
    assert code == 2 and str(bad) in err and str(DIM + 8) in err, err


def test_too_few_trials_is_exit_2_naming_the_file(trained, tmp_path, capsys):
    code, err = _error(trained, capsys, tmp_path / "o", "--sentences", "500")
    assert code == 2 and str(trained["train"]) in err and "500" in err, err


@pytest.mark.parametrize("length", [10, 20])
def test_too_short_trials_are_exit_2_naming_the_file(trained, tmp_path, capsys, length):
    # 10 steps: shorter than one 14-step patch; 20 steps: 2 outputs, fewer than the labels need
    bad = _rewrite(trained["train"], tmp_path / "t15.2099.01.02" / "data_train.hdf5", length=length)
    code, err = _error(trained, capsys, tmp_path / "o", session=bad)
    assert code == 2 and str(bad) in err, err
    assert not (tmp_path / "o" / C.CHECKPOINT_NAME).exists()


def test_a_session_of_the_model_needs_replace(trained, tmp_path, capsys):
    present = trained["data"] / SESSIONS[1] / "data_train.hdf5"
    code, err = _error(trained, capsys, tmp_path / "o", "--steps", "1", session=present)
    assert code == 2 and "--replace" in err and SESSIONS[1] in err, err
    assert _calibrate(trained, tmp_path / "r", "--steps", "2", "--sentences", "4", "--replace",
                      "--init-day", "1", session=present) == 0
    before, after = _weights(trained["ckpt"]), _weights(tmp_path / "r" / C.CHECKPOINT_NAME)
    assert set(after) == set(before), "--replace keeps the number of days"
    for k, v in before.items():
        assert torch.equal(after[k], v) == (k not in ("day_weights.1", "day_biases.1")), k


def test_missing_file_and_bad_options_are_exit_2(trained, tmp_path, capsys):
    code, err = _error(trained, capsys, tmp_path / "o", session=tmp_path / "nope.hdf5")
    assert code == 2 and "nope.hdf5" in err
    code, err = _error(trained, capsys, tmp_path / "o", "--keep", "0")
    assert code == 2 and "--keep" in err
    code, err = _error(trained, capsys, tmp_path / "o", "--init-day", "7")
    assert code == 2 and "--init-day" in err


def _garbage_after(src: Path, dst: Path, n: int) -> Path:
    """A copy of session file ``src`` whose trials after the first ``n`` carry random labels."""
    rng = np.random.default_rng(3)
    out = []
    for i, t in enumerate(read_session_file(src, "train")):
        if i >= n:
            k = int(rng.integers(1, t.seq_len + 1))
            t = Trial(t.input_features, t.block_num, t.trial_num, t.session,
                      rng.integers(1, 41, size=k).astype(np.int32), np.full(5, 120, np.int32), k, "zzzzz")
        out.append(t)
    return write_session_file(dst, out, "train")


def test_semi_supervised_reports_each_kind_and_never_reads_the_rest_labels(trained, tmp_path, capsys):
    args = ("--sentences", "6", "--unlabelled-rest", "--rounds", "2", "--steps", "4", "--val",
            str(trained["val"]))
    assert _calibrate(trained, tmp_path / "a", *args) == 0
    line = capsys.readouterr().out
    assert "6 sentences + 8 unlabelled trials (semi-supervised" in line, line
    report = json.loads((tmp_path / "a" / C.REPORT_NAME).read_text())
    assert report["unlabelled_rest"] and report["n_sentences"] == 6 and report["n_unlabelled"] == 8
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["labelled"] == 6 and r["of"] == 8 for r in rounds)  # 6 < 10: no held-out part
    assert rounds[0]["kept"] == 0 and all(1 <= r["kept"] <= 8 for r in rounds[1:])
    assert report["steps"] == sum(r["steps"] for r in rounds) == 4 + 2 * 2
    # the same file with garbage labels after the sixth trial: the same layer, bit for bit
    bad = _garbage_after(trained["train"], tmp_path / NEW / "data_train.hdf5", 6)
    assert _calibrate(trained, tmp_path / "b", *args, session=bad) == 0
    assert torch.equal(_weights(tmp_path / "a" / C.CHECKPOINT_NAME)["day_weights.3"],
                       _weights(tmp_path / "b" / C.CHECKPOINT_NAME)["day_weights.3"])


@pytest.mark.parametrize("extra, words", [
    (("--unlabelled-rest",), "--unlabelled-rest needs --sentences N >= 1"),
    (("--sentences", "0", "--unlabelled-rest", "--val", "v"), "--unlabelled-rest needs --sentences"),
    (("--sentences", "4", "--unlabelled-rest", "--unlabelled"), "exclude each other"),
    (("--sentences", "14", "--unlabelled-rest"), "none is left unlabelled after the first 14"),
])
def test_semi_supervised_bad_options_are_exit_2(trained, tmp_path, capsys, extra, words):
    code, err = _error(trained, capsys, tmp_path / "o", *extra)
    assert code == 2 and words in err, err
    assert not (tmp_path / "o" / C.CHECKPOINT_NAME).exists()


def test_update_rank_and_pull_to_start_limit_the_change(trained, tmp_path):
    """--update-rank R: the weights move from the starting layer by a matrix of rank <= R;
    --pull-to-start W: a strong pull moves them less than none."""
    start = _weights(trained["ckpt"])["day_weights.1"].double()
    change = {}
    for name, extra in (("free", ()), ("rank", ("--update-rank", "2")),
                        ("pulled", ("--pull-to-start", "1000"))):
        assert _calibrate(trained, tmp_path / name, "--sentences", "6", "--steps", "5",
                          "--init-day", "1", *extra) == 0
        change[name] = _weights(tmp_path / name / C.CHECKPOINT_NAME)["day_weights.3"].double() - start
    s = torch.linalg.svdvals(change["rank"])
    assert s[1] > 0 and s[2] <= 1e-6 * s[0], s[:4]
    assert torch.linalg.matrix_rank(change["free"]) > 2
    assert 0 < change["pulled"].norm() < change["free"].norm()
