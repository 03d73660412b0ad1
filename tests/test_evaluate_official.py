"""fastbci.evaluate --official-eval (the official per-trial loop), ensembles of checkpoints, and
--llm (words rescored by a causal LM), on test_evaluate's tiny trained model."""
import copy
import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastbci import evaluation as E
from fastbci.commands import main as fastbci
from fastbci import synth
from fastbci.config import dump
from fastbci.model import GRUDecoder
import test_evaluate

trained = test_evaluate.trained  # the tiny trained model and its synthetic release (a fixture)


def _ckpt(run: dict) -> Path:
    return run["out"] / "checkpoint" / "best_checkpoint"


def _official_taps(std: float, size: int) -> torch.Tensor:
    """The official gauss_smooth kernel, computed as its code does."""
    from scipy.ndimage import gaussian_filter1d
    impulse = np.zeros(size, dtype=np.float32)
    impulse[size // 2] = 1
    k = gaussian_filter1d(impulse, std)
    k = k[np.argwhere(k > 0.01)]
    return torch.tensor(np.squeeze(k / np.sum(k)), dtype=torch.float32)


def _levenshtein(a, b) -> int:
    d = np.arange(len(b) + 1)
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return int(d[-1])


def _official_loop(cfg, ckpt):
    """A plain re-implementation of evaluate_model.py's loop (CPU, float32): every trial of
    every session's val file, one at a time: 'valid' smoothing, the model, greedy decoding;
    then the PER as total edits over total true phonemes. Results sorted by (day, block, trial)."""
    model = GRUDecoder.from_config(cfg, impl="reference")
    model.load_official_state_dict(torch.load(ckpt, weights_only=False)["model_state_dict"])
    model.eval()
    ds = cfg["dataset"]
    tf = ds["data_transforms"]
    taps = _official_taps(tf["smooth_kernel_std"], tf["smooth_kernel_size"])
    found = []
    for day, session in enumerate(ds["sessions"]):
        path = Path(ds["dataset_dir"]) / session / "data_val.hdf5"
        if not path.is_file():
            continue
        with h5py.File(path, "r") as f:
            for key in f.keys():
                g = f[key]
                x = torch.tensor(g["input_features"][:][None], dtype=torch.float32)
                C = x.shape[2]
                kernel = taps.view(1, 1, -1).repeat(C, 1, 1)
                with torch.no_grad():
                    x = F.conv1d(x.permute(0, 2, 1), kernel, padding="valid", groups=C).permute(0, 2, 1)
                    logits = model(x, torch.tensor([day])).float().numpy()[0]
                seq = torch.unique_consecutive(torch.from_numpy(logits.argmax(-1))).numpy()
                pred = [int(p) for p in seq if p != 0]
                true = [int(t) for t in g["seq_class_ids"][:int(g.attrs["seq_len"])]]
                found.append(((day, int(g.attrs["block_num"]), int(g.attrs["trial_num"])), session,
                              logits, pred, true))
    found.sort(key=lambda r: r[0])
    edits = sum(_levenshtein(r[4], r[3]) for r in found)
    return found, edits / sum(len(r[4]) for r in found)


def test_official_per_equals_a_plain_reimplementation(trained, tmp_path):
    s = E.evaluate(_ckpt(trained), "val", out_dir=tmp_path / "o", quiet=True, official=True)
    found, per = _official_loop(trained["cfg"], _ckpt(trained))
    assert s["semantics"] == "official" and s["n_trials"] == len(found) >= 10
    assert s["per"] == per
    z = np.load(tmp_path / "o" / "logits_val.npz")
    assert [(int(d), int(b), int(t)) for d, b, t in zip(z["day"], z["block_num"], z["trial_num"])] == \
        [r[0] for r in found]
    for i, r in enumerate(found):
        assert np.array_equal(z["logits"][z["offsets"][i]:z["offsets"][i + 1]], r[2]), f"trial {i} logits"
        assert z["tokens"][i, :z["n_tokens"][i]].tolist() == r[3]
    for session in {r[1] for r in found}:
        mine = [r for r in found if r[1] == session]
        want = sum(_levenshtein(r[4], r[3]) for r in mine) / sum(len(r[4]) for r in mine)
        assert s["per_by_day"][session] == pytest.approx(want, abs=1e-15)
    # the validation-style run of the same checkpoint: 'same' smoothing keeps every time step
    v = E.evaluate(_ckpt(trained), "val", out_dir=tmp_path / "v", quiet=True)
    assert s["per_validation"] == v["per"] and v["semantics"] == "validation"
    zv = np.load(tmp_path / "v" / "logits_val.npz")
    assert (zv["lengths"] > z["lengths"]).all()


def test_an_ensemble_of_a_checkpoint_with_itself_equals_it(trained, tmp_path, capsys):
    ck = str(_ckpt(trained))
    assert fastbci(["evaluate", "--checkpoint", ck, "--split", "val", "--quiet", "--out", str(tmp_path / "one")]) == 0
    one_out = capsys.readouterr().out
    assert fastbci(["evaluate", "--checkpoint", ck, "--checkpoint", ck, "--split", "val", "--quiet",
                   "--out", str(tmp_path / "two")]) == 0
    two_out = capsys.readouterr().out
    one, two = (np.load(tmp_path / d / "logits_val.npz") for d in ("one", "two"))
    x = one["logits"].astype(np.float64)
    lsm = x - x.max(-1, keepdims=True)
    lsm = (lsm - np.log(np.exp(lsm).sum(-1, keepdims=True))).astype(np.float32)
    assert np.array_equal(two["logits"], lsm)
    for k in ("offsets", "tokens", "n_tokens", "session", "block_num", "trial_num"):
        assert np.array_equal(two[k], one[k]), k
    assert (tmp_path / "one" / "transcripts_val.csv").read_text() == \
        (tmp_path / "two" / "transcripts_val.csv").read_text()
    j1, j2 = (json.load(open(tmp_path / d / "per_val.json")) for d in ("one", "two"))
    assert j2["per"] == j1["per"] and j2["per_by_day"] == j1["per_by_day"]
    assert [m["per"] for m in j2["models"]] == [j1["per"], j1["per"]]
    per_line = one_out.strip().splitlines()[0]
    assert per_line.startswith("val PER: ") and f"val PER (ensemble): {per_line[9:]}" in two_out
    assert two_out.count(f"val PER of {ck}: {per_line[9:]}") == 2


def test_an_ensemble_needs_the_same_framing(trained, tmp_path, capsys):
    """A model with another patch stride (saved at init, official layout) is refused, naming
    both files and both values; --llm without --lm is refused before any model runs."""
    cfg = copy.deepcopy(trained["cfg"])
    cfg["model"]["patch_stride"] = 2
    folder = tmp_path / "stride2" / "checkpoint"
    folder.mkdir(parents=True)
    torch.save({"model_state_dict": GRUDecoder.from_config(cfg, impl="reference").official_state_dict()},
               folder / "best_checkpoint")
    dump(cfg, folder / "args.yaml")
    ck = str(_ckpt(trained))
    assert fastbci(["evaluate", "--checkpoint", ck, "--checkpoint", str(folder / "best_checkpoint"), "--quiet",
                   "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"cannot ensemble {ck} (patch size 14, stride 4) with {folder / 'best_checkpoint'} (patch " \
           "size 14, stride 2)" in err and "Traceback" not in err
    assert fastbci(["evaluate", "--checkpoint", ck, "--llm", str(tmp_path)]) == 2
    assert "--llm rescores the word decoder's n-best lists: pass --lm LM too" in capsys.readouterr().err


def test_lm_and_llm_words_in_one_command(trained, tmp_path, capsys):
    """--lm and --llm: n-best, rescoring, words, WER and the CSV from one evaluate command."""
    pytest.importorskip("flashlight.lib.text", reason="flashlight-text (pip install 'fastbci[lm]')")
    pytest.importorskip("transformers", reason="transformers (pip install 'fastbci[llm]')")
    from fastbci.lm import Lexicon, build_arpa
    from fastbci.lm.tinylm import make_tiny_lm
    from fastbci.metrics import PHONEMES
    corpus = (trained["data"] / "corpus_train.txt").read_text().split("\n")
    build_arpa(trained["data"] / "corpus_train.txt", tmp_path / "lm.arpa", order=3)
    lex = Lexicon({w: [[PHONEMES.index(p) for p in ph]] for w, ph in synth.LEXICON.items()})
    lex.write(tmp_path / "lex.txt")
    make_tiny_lm(tmp_path / "llm", [c for c in corpus if c], extra_words=list(synth.LEXICON), steps=20)
    out = tmp_path / "ev"
    assert fastbci(["evaluate", "--checkpoint", str(_ckpt(trained)), "--quiet", "--out", str(out),
                   "--lm", str(tmp_path / "lm.arpa"), "--lexicon", str(tmp_path / "lex.txt"),
                   "--no-cmudict", "--workers", "1", "--beam-size", "20",
                   "--llm", str(tmp_path / "llm"), "--llm-device", "cpu", "--nbest", "4",
                   "--llm-alpha", "0.3", "--nbest-file", str(tmp_path / "nb.csv")]) == 0
    assert "val WER: " in capsys.readouterr().out
    saved = json.load(open(out / "per_val.json"))
    assert saved["llm"] == str(tmp_path / "llm") and saved["rescore"]["llm_alpha"] == 0.3
    assert saved["wer"] is not None and saved["wer_decoder"] is not None
    rows = list(csv.reader(open(out / "words_val.csv")))
    assert rows[0] == ["id", "text"] and len(rows) == 11
    nb = list(csv.DictReader(open(tmp_path / "nb.csv")))
    assert {r["id"] for r in nb} == {str(i) for i in range(10)} and max(int(r["rank"]) for r in nb) <= 3
