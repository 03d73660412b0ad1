"""python -m fastbci.evaluate on fastbci and official checkpoints."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fastbci import evaluation as E
from fastbci.commands import main as fastbci
from fastbci import synth
from fastbci.training import Trainer
from fastbci.config import dump, load_config
from fastbci.data import read_session_file
from fastbci.metrics import PHONEMES


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for 3 batches on a synthetic release with several blocks per session."""
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    synth.write_release(data, sessions=("t15.2023.08.13", "t15.2023.08.18", "t15.2024.03.03"),
                        n_train=6, n_val=5, n_test=4, neural_dim=24, min_words=1, max_words=2,
                        block_size=(1, 3), seed=3)
    out = root / "run"
    cfg = load_config(data / "synth_config.yaml", [
        f"output_dir={out}", f"checkpoint_dir={out}/checkpoint", "model.n_units=12",
        "model.n_layers=1", "model.rnn_dropout=0.0", "dataset.batch_size=3", "dataset.days_per_batch=2",
        "num_training_batches=3", "batches_per_val_step=100", "lr_warmup_steps=0",
        "lr_warmup_steps_day=0", "lr_max=0.01", "lr_max_day=0.01", "fastbci.impl=reference",
        "fastbci.device=cpu", "fastbci.progress=false", "fastbci.plot=false"])
    res = Trainer(cfg, console=False).fit()
    assert res.status == "finished"
    return {"root": root, "data": data, "out": out, "cfg": cfg, "res": res}


def _expected_order(cfg, split):
    """(session, block, trial) of every trial of the split, read straight from the files and
    sorted in the configured session order."""
    keys = []
    for d, s in enumerate(cfg["dataset"]["sessions"]):
        p = Path(cfg["dataset"]["dataset_dir"]) / s / f"data_{split}.hdf5"
        if not p.is_file():
            continue
        for t in read_session_file(p, split):
            keys.append((d, int(t.block_num), int(t.trial_num), s))
    return sorted(keys)


def test_val_per_csv_and_npz_match_the_trainer(trained, tmp_path):
    ckpt = trained["out"] / "checkpoint" / "best_checkpoint"
    out = tmp_path / "ev"
    summary = E.evaluate(ckpt, "val", out_dir=out, quiet=True)
    # the best checkpoint was saved at the last validation (batch 2): same PER and loss
    last_val = trained["res"].val_history[-1]
    assert summary["per"] == pytest.approx(last_val["per"], abs=1e-12)
    assert summary["loss"] == pytest.approx(last_val["loss"], rel=1e-5)
    assert summary["per_by_day"] == pytest.approx(last_val["per_by_day"])

    rows = list(csv.reader(open(out / "transcripts_val.csv")))
    assert rows[0] == ["id", "text"]
    order = _expected_order(trained["cfg"], "val")
    # the train-only session has no val file; the others: 5 trials each
    assert len(rows) - 1 == len(order) == 10
    assert [int(r[0]) for r in rows[1:]] == list(range(10))
    allowed = set(p.strip() for p in PHONEMES[1:]) | {"|"}
    for _, text in rows[1:]:
        assert set(text.split()) <= allowed, text

    z = np.load(out / "logits_val.npz")
    assert [(int(d), int(b), int(t), str(s)) for d, b, t, s in
            zip(z["day"], z["block_num"], z["trial_num"], z["session"])] == order, "(session, block, trial) order"
    assert z["offsets"][0] == 0 and z["offsets"][-1] == z["logits"].shape[0]
    np.testing.assert_array_equal(np.diff(z["offsets"]), z["lengths"])
    assert z["logits"].shape[1] == 41 and z["logits"].dtype == np.float32
    # the CSV text is the greedy decoding of the saved logits
    for i in (0, 9):
        lg = z["logits"][z["offsets"][i]:z["offsets"][i + 1]]
        ids = lg.argmax(-1)
        ids = [int(c) for j, c in enumerate(ids) if (j == 0 or c != ids[j - 1]) and c != 0]
        assert rows[1 + i][1] == " ".join(PHONEMES[c].strip() for c in ids)
    assert len(z["sentence_label"]) == 10


def test_test_split_and_official_checkpoint(trained, tmp_path):
    """An official-style checkpoint (prefixed keys, args.yaml beside it) on the unlabelled split."""
    src = torch.load(trained["out"] / "checkpoint" / "best_checkpoint", weights_only=False)
    folder = tmp_path / "official" / "checkpoint"
    folder.mkdir(parents=True)
    sd = {f"_orig_mod.{k}": v for k, v in src["model_state_dict"].items()}
    torch.save({"model_state_dict": sd, "val_PER": 0.5}, folder / "best_checkpoint")
    dump(trained["cfg"], folder / "args.yaml")
    rc = fastbci(["evaluate", "--checkpoint", str(folder / "best_checkpoint"), "--split", "test", "--quiet",
                 "--out", str(tmp_path / "t")])
    assert rc == 0
    rows = list(csv.reader(open(tmp_path / "t" / "transcripts_test.csv")))
    order = _expected_order(trained["cfg"], "test")
    assert len(rows) - 1 == len(order) == 8
    z = np.load(tmp_path / "t" / "logits_test.npz")
    assert [(int(d), int(b), int(t), str(s)) for d, b, t, s in
            zip(z["day"], z["block_num"], z["trial_num"], z["session"])] == order
    assert "sentence_label" not in z.files and not (tmp_path / "t" / "per_val.json").exists()
    # same logits as with the fastbci checkpoint
    E.evaluate(trained["out"] / "checkpoint" / "best_checkpoint", "test", out_dir=tmp_path / "t2", quiet=True)
    np.testing.assert_array_equal(np.load(tmp_path / "t2" / "logits_test.npz")["logits"], z["logits"])


def test_embedded_config_and_bad_inputs(trained, tmp_path, capsys):
    # no args.yaml beside: the configuration stored in the fastbci checkpoint is used
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(trained["out"] / "checkpoint" / "best_checkpoint", lone / "ck")
    s = E.evaluate(lone / "ck", "val", out_dir=tmp_path / "o", quiet=True)
    assert s["n_trials"] == 10

    assert fastbci(["evaluate", "--checkpoint", str(tmp_path / "missing"), "--split", "val"]) == 2
    assert f"checkpoint {tmp_path / 'missing'} not found" in capsys.readouterr().err
    bad = tmp_path / "garbage"
    bad.write_bytes(b"not a checkpoint")
    assert fastbci(["evaluate", "--checkpoint", str(bad), "--split", "val"]) == 2
    assert f"{bad} is not a checkpoint: it is text" in capsys.readouterr().err
    # a checkpoint of another model size: a clear mismatch error
    assert fastbci(["evaluate", "--checkpoint", str(lone / "ck"), "--split", "val", "model.n_units=13"]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "Traceback" not in err


def test_lm_words_wer_and_csv(trained, tmp_path, capsys):
    """--lm: the logits just written are decoded to words: WER (val) and words_val.csv."""
    pytest.importorskip("flashlight.lib.text", reason="flashlight-text (pip install 'fastbci[lm]')")
    from fastbci.lm import Lexicon, build_arpa
    lm = tmp_path / "lm.arpa"
    build_arpa(trained["data"] / "corpus_train.txt", lm, order=3)
    lex = tmp_path / "lexicon.txt"
    Lexicon({w: [[PHONEMES.index(p) for p in ph]] for w, ph in synth.LEXICON.items()}).write(lex)
    ckpt = str(trained["out"] / "checkpoint" / "best_checkpoint")
    out = tmp_path / "ev"
    rc = fastbci(["evaluate", "--checkpoint", ckpt, "--split", "val", "--quiet", "--out", str(out), "--lm", str(lm),
                 "--lexicon", str(lex), "--no-cmudict", "--workers", "1", "--beam-size", "20"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "val PER: " in stdout and "val WER: " in stdout
    rows = list(csv.reader(open(out / "words_val.csv")))
    assert rows[0] == ["id", "text"] and len(rows) == 11
    assert all(w in synth.LEXICON for _, text in rows[1:] for w in text.split())
    saved = json.load(open(out / "per_val.json"))
    assert saved["wer"] is not None and saved["files"]["words_csv"] == str(out / "words_val.csv")
    # a missing LM file stops before the model runs
    assert fastbci(["evaluate", "--checkpoint", ckpt, "--split", "val", "--lm", str(tmp_path / "none.arpa")]) == 2
    assert "none.arpa does not exist" in capsys.readouterr().err
