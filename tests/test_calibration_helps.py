"""Calibration helps: on a tiny held-out day whose features drifted strongly, the new day layer
beats the borrowed one (labelled, unlabelled and semi-supervised calibration, and test-time
adaptation in evaluate), in the report and in the written checkpoint; and ``evaluate
--adapt-day`` never reads the split's labels.

The release is ``synth.write_release(..., holdout=1)`` (its layout, sentences, labels and
configuration) with each trial's features rewritten as a clean code of its phonemes (a random
pattern per phoneme held for its duration, plus noise), mixed by a per-session linear drift,
strong for the held-out day: a tiny model learns that in a few hundred batches, where the synth
features need thousands, so the tests stay fast while the model decodes well enough for its own
pseudo-labels to mean something.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fastbci import calibration as C
from fastbci import evaluation as E
from fastbci import synth
from fastbci.commands import main as fastbci
from fastbci.config import load_config
from fastbci.data import TrialStore
from fastbci.data.t15 import Trial, read_session_file, write_session_file
from fastbci.loading import load_model
from fastbci.official_eval import per_report
from fastbci.training import Trainer

SESSIONS = ("t15.2023.08.13", "t15.2023.08.18", "t15.2023.08.20", "t15.2023.08.25")
NEW = SESSIONS[-1]
DIM = 16
STEPS = 30  # calibration and adaptation steps: few, the drift is strong


def _phoneme_code_features(data: Path, seed: int = 0) -> None:
    """Rewrite every trial of the release under ``data`` with features that code its phonemes
    (labels, sentences and trial numbering unchanged); session drift ``x (I + a R) + a b``, a = 0.3
    for the training days and 1.0 for the held-out one."""
    rng = np.random.default_rng(seed)
    code = 3.0 * rng.standard_normal((41, DIM))
    code[0] = 0.0
    for s in SESSIONS:
        a = 1.0 if s == NEW else 0.3
        mix = np.eye(DIM) + a * rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)
        offset = a * rng.standard_normal(DIM)
        for split in ("train", "val"):
            path = data / s / f"data_{split}.hdf5"
            trials = []
            for t in read_session_file(path, split):
                ids = np.asarray(t.seq_class_ids[:t.seq_len])
                dur = rng.integers(12, 24, size=len(ids))
                lead = int(rng.integers(20, 40))
                x = np.zeros((lead + int(dur.sum()) + int(rng.integers(10, 20)), DIM))
                for p, start, d in zip(ids, lead + np.concatenate([[0], np.cumsum(dur)[:-1]]), dur):
                    x[start:start + d] += code[p]
                x = (x + 0.5 * rng.standard_normal(x.shape)) @ mix + offset
                trials.append(Trial(x.astype(np.float32), t.block_num, t.trial_num, t.session,
                                    t.seq_class_ids, t.transcription, t.seq_len, t.sentence_label))
            write_session_file(path, trials, split)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny GRU trained 400 batches on the three training days (about 5% PER on their val)."""
    root = tmp_path_factory.mktemp("helps")
    data = root / "data"
    summ = synth.write_release(data, sessions=SESSIONS, n_train=32, n_val=16, n_test=0,
                               neural_dim=DIM, min_words=1, max_words=2, block_size=(2, 4), seed=5,
                               holdout=1, train_only=())
    assert summ["holdout"] == [NEW]
    _phoneme_code_features(data)
    out = root / "run"
    cfg = load_config(data / "synth_config.yaml", [
        f"output_dir={out}", f"checkpoint_dir={out}/checkpoint", "model.n_units=32",
        "model.n_layers=1", "model.rnn_dropout=0.0", "model.input_network.input_layer_dropout=0.0",
        "dataset.batch_size=16", "dataset.days_per_batch=3", "num_training_batches=400",
        "batches_per_val_step=400", "lr_max=0.02", "lr_max_day=0.02", "lr_warmup_steps=10",
        "lr_warmup_steps_day=10", "lr_decay_steps=400", "lr_decay_steps_day=400",
        "fastbci.impl=reference", "fastbci.rng=torch", "fastbci.device=cpu",
        "fastbci.progress=false", "fastbci.plot=false"])
    res = Trainer(cfg, console=False).fit()
    assert res.status == "finished"
    assert res.val_history[-1]["per"] < 0.15, "the tiny model must decode its training days"
    return {"root": root, "data": data, "ckpt": out / "checkpoint" / "best_checkpoint",
            "train": data / NEW / "data_train.hdf5", "val": data / NEW / "data_val.hdf5"}


MODES = {
    "labelled": dict(sentences=20),
    "unlabelled": dict(unlabelled=True),
    "semi-supervised": dict(sentences=8, unlabelled_rest=True),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_the_new_layer_beats_the_borrowed_one(model, tmp_path, mode):
    """PER on the held-out day's val trials: after < before in the report, and the written
    checkpoint, evaluated afresh, scores the new day as the report says (the trained layer is
    the one written and used)."""
    out = tmp_path / "cal"
    report = C.calibrate(model["ckpt"], model["train"], out=out, val=model["val"], steps=STEPS,
                         **MODES[mode])
    assert report.per_after < report.per_before, (mode, report.per_before, report.per_after)
    summary = E.evaluate(out / C.CHECKPOINT_NAME, "val", out_dir=tmp_path / "ev", quiet=True)
    assert summary["per_by_day"][NEW] == pytest.approx(report.per_after, abs=1e-12)
    assert summary["per_by_day"][NEW] < report.per_before
    if mode == "semi-supervised":  # the trials used of each kind, per round
        assert [r["round"] for r in report.rounds] == [0, 1, 2, 3]
        assert all(r["labelled"] == 8 and r["of"] == 24 for r in report.rounds)
        assert report.rounds[0]["kept"] == 0 and all(r["kept"] >= 1 for r in report.rounds[1:])
        assert report.n_unlabelled == 24 and report.n_sentences == 8


def _adapter(**kw):
    return C.DayAdaptation(steps=STEPS, **kw)


@pytest.fixture(scope="module")
def borrowed(model, tmp_path_factory):
    """The model with the held-out day added on a borrowed layer (no calibration sentence)."""
    out = tmp_path_factory.mktemp("borrowed")
    C.calibrate(model["ckpt"], model["train"], out=out, sentences=0, val=model["val"])
    return out / C.CHECKPOINT_NAME


def test_adapt_day_improves_the_borrowed_layer(borrowed, tmp_path):
    """A day without a single labelled sentence: evaluate --adapt-day on its val trials beats
    the borrowed layer, and the files written are the adapted model's."""
    s = E.evaluate(borrowed, "val", out_dir=tmp_path / "ev", quiet=True, adapt=_adapter())
    adaptation = s["adaptation"]
    assert s["per_by_day"][NEW] < adaptation["per_by_day_without"][NEW], (
        "adapted", s["per_by_day"][NEW], "without", adaptation["per_by_day_without"][NEW])
    assert s["per"] < adaptation["per_without"]
    assert set(adaptation["models"][0]["days"]) == set(SESSIONS)
    saved = json.loads((tmp_path / "ev" / "per_val.json").read_text())
    assert saved["per"] == s["per"] and saved["adaptation"]["per_without"] == adaptation["per_without"]
    plain = E.evaluate(borrowed, "val", out_dir=tmp_path / "plain", quiet=True)
    assert plain["per"] == adaptation["per_without"]
    assert not np.array_equal(np.load(tmp_path / "ev" / "logits_val.npz")["logits"],
                              np.load(tmp_path / "plain" / "logits_val.npz")["logits"])


def _garbage_labels(src: Path, dst: Path) -> None:
    """A copy of the release ``src`` in ``dst`` whose val files carry random phonemes (random
    lengths up to the true ones), transcriptions and sentences."""
    shutil.copytree(src, dst)
    rng = np.random.default_rng(7)
    for s in SESSIONS:
        path = dst / s / "data_val.hdf5"
        trials = []
        for t in read_session_file(path, "val"):
            n = int(rng.integers(1, t.seq_len + 1))
            ids = rng.integers(1, 41, size=n).astype(np.int32)
            text = "".join(rng.choice(list("qxzj"), size=8))
            trials.append(Trial(t.input_features, t.block_num, t.trial_num, t.session, ids,
                                np.frombuffer(text.encode(), np.uint8).astype(np.int32), n, text))
        write_session_file(path, trials, "val")


def test_adapt_day_never_reads_the_labels(model, borrowed, tmp_path):
    """The split's labels replaced by garbage: the adapted outputs are bit for bit the same, so
    is their PER against the true labels."""
    bad = tmp_path / "garbage"
    _garbage_labels(model["data"], bad)
    runs = {}
    for name, data in (("true", model["data"]), ("garbage", bad)):
        E.evaluate(borrowed, "val", out_dir=tmp_path / f"ev-{name}", quiet=True, adapt=_adapter(),
                   overrides=[f"dataset.dataset_dir={data}"])
        runs[name] = np.load(tmp_path / f"ev-{name}" / "logits_val.npz")
    true, garbage = runs["true"], runs["garbage"]
    np.testing.assert_array_equal(garbage["logits"], true["logits"],
                                  err_msg="the adapted logits depend on the split's labels")
    labels = [t.seq_class_ids[:t.seq_len] for s in SESSIONS
              for t in read_session_file(model["data"] / s / "data_val.hdf5", "val")]
    sessions = [str(x) for x in true["session"]]

    def per(z):
        tokens = [z["tokens"][i][:z["n_tokens"][i]] for i in range(len(z["n_tokens"]))]
        return per_report(tokens, labels, sessions)[0]
    assert per(garbage) == per(true)
    # the garbage did reach the scoring: the garbage run's own PER is another number
    got = json.loads((tmp_path / "ev-garbage" / "per_val.json").read_text())
    assert got["per"] != per(true)


def test_the_adapted_layers_are_deterministic_and_only_the_days(borrowed):
    """The same seed gives the same layers bit for bit, another seed others; only day layers
    move; the split's store must come without labels."""
    layers = []
    for seed in (3, 3, 4):  # a few steps: the same seed, the same layers
        loaded = load_model(borrowed)
        before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
        E.adapt_days(loaded, "val", C.DayAdaptation(rounds=1, steps=2, seed=seed), progress=False)
        after = loaded.model.state_dict()
        moved = {k for k in before if not torch.equal(before[k], after[k])}
        assert moved, "no parameter moved"
        assert all(k.startswith(("day_weights.", "day_biases.")) for k in moved), moved
        layers.append(after[f"day_weights.{SESSIONS.index(NEW)}"])
    assert torch.equal(layers[0], layers[1]) and not torch.equal(layers[0], layers[2])
    loaded = load_model(borrowed)
    store = TrialStore.from_config(loaded.cfg, "val", progress=False)
    with pytest.raises(ValueError, match="reads no labels"):
        _adapter()(loaded.model, loaded.cfg, store, torch.device("cpu"))


def test_adapt_day_on_the_command_line(borrowed, tmp_path, capsys):
    assert fastbci(["evaluate", "--checkpoint", str(borrowed), "--out", str(tmp_path / "o"),
                    "--adapt-day", "--steps", str(STEPS), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "val PER: " in out and "val PER without --adapt-day: " in out, out
    assert fastbci(["evaluate", "--checkpoint", str(borrowed), "--out", str(tmp_path / "p"),
                    "--rounds", "2"]) == 2
    err = capsys.readouterr().err
    assert "--rounds" in err and "--adapt-day" in err and "Traceback" not in err, err
