"""The demo's words step: a 3-gram of the synthetic train sentences and the validation WER."""
import pytest

from fastbci import commands, demo, synth
from fastbci.training import Trainer
from fastbci.config import load_config

pytest.importorskip("flashlight.lib.text", reason="flashlight-text (pip install 'fastbci[lm]')")


def test_demo_prints_the_wer(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    synth.write_release(data, sessions=("t15.2023.08.13", "t15.2023.08.18"), n_train=4, n_val=3, n_test=0,
                        neural_dim=16, min_words=1, max_words=2, seed=1)
    (data / synth.CORPUS_FILE).unlink()   # a release written before it had a corpus: rebuilt
    out = tmp_path / "run"
    cfg = load_config(data / "synth_config.yaml", [
        f"output_dir={out}", f"checkpoint_dir={out}/checkpoint", "model.n_units=8", "model.n_layers=1",
        "model.rnn_dropout=0.0", "dataset.batch_size=4", "num_training_batches=2", "batches_per_val_step=1",
        "lr_warmup_steps=0", "lr_warmup_steps_day=0", "fastbci.impl=reference", "fastbci.device=cpu",
        "fastbci.progress=false", "fastbci.plot=false"])
    res = Trainer(cfg, console=False).fit()
    # the demo's own training is tested elsewhere: here it returns this small run
    monkeypatch.setattr(demo, "run", lambda *a, **k: res)
    assert commands.main(["demo", "--out", str(out), "--data", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "Final validation PER" in printed
    assert "Validation WER (best checkpoint, PER " in printed and "with a 3-gram" in printed
    assert (data / synth.CORPUS_FILE).is_file() and (out / "lm" / "lm_3gram.arpa").is_file()
    rows = (out / "words" / "words_val.csv").read_text().splitlines()
    assert rows[0] == "id,text" and len(rows) == 1 + 6
    assert all(w in synth.LEXICON for r in rows[1:] for w in r.split(",", 1)[1].split())
