"""The synthetic release: identical layout, the release's invariants, realistic statistics."""
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from fastbci import outputs
from fastbci.config import load_config
from fastbci.data import PHONEMES, SILENCE_ID, TrialStore
from fastbci.commands import main as fastbci
from fastbci.outputs import MARKER
from fastbci.synth import (LEXICON, OFFICIAL_SESSIONS, PRESETS, TRAIN_ONLY_SESSIONS, read_params,
                           write_release)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    t0 = time.perf_counter()
    summ = write_release(root, **PRESETS["small"])
    summ["elapsed"] = time.perf_counter() - t0
    return root, summ


def test_layout_and_invariants(small):
    root, summ = small
    assert summ["elapsed"] < 2.0, f"--small took {summ['elapsed']:.2f} s"
    sessions = PRESETS["small"]["sessions"]
    for s in sessions:
        files = sorted(p.name for p in (root / s).iterdir() if p.name != MARKER)
        if s in TRAIN_ONLY_SESSIONS:
            assert files == ["data_train.hdf5"], (s, files)
        else:
            assert files == ["data_test.hdf5", "data_train.hdf5", "data_val.hdf5"], (s, files)
        for split in ("train", "val", "test"):
            p = root / s / f"data_{split}.hdf5"
            if not p.exists():
                continue
            with h5py.File(p, "r") as f:
                keys = list(f.keys())
                assert keys == [f"trial_{i:04d}" for i in range(len(keys))]
                order = []
                for k in keys:
                    g = f[k]
                    x = g["input_features"]
                    assert x.dtype == np.float32 and x.shape == (g.attrs["n_time_steps"], 32)
                    assert 130 <= x.shape[0] <= 1600
                    assert g.attrs["session"] == s
                    order.append((int(g.attrs["block_num"]), int(g.attrs["trial_num"])))
                    if split == "test":
                        assert set(g.keys()) == {"input_features"}
                        assert "seq_len" not in g.attrs and "sentence_label" not in g.attrs
                        continue
                    ids = g["seq_class_ids"][()]
                    assert ids.shape == (500,) and ids.dtype == np.int32
                    L = int(g.attrs["seq_len"])
                    assert np.count_nonzero(ids) == L and np.all(ids[:L] > 0) and np.all(ids[L:] == 0)
                    assert ids[L - 1] == SILENCE_ID
                    label = g.attrs["sentence_label"]
                    n_words = len(label.split())
                    assert np.count_nonzero(ids == SILENCE_ID) == n_words
                    assert label[0].isupper() and label[-1] in ".?!"
                    tr = g["transcription"][()]
                    assert tr.shape == (500,)
                    assert "".join(map(chr, tr[tr > 0])) == label
                assert order == sorted(order), f"{p}: trials not ordered by block then trial"


def test_loads_with_the_written_config(small):
    root, summ = small
    cfg = load_config(summ["config"])
    assert cfg["dataset"]["sessions"] == list(PRESETS["small"]["sessions"])
    assert cfg["dataset"]["dataset_probability_val"] == [1, 1, 0]
    store = TrialStore.from_config(cfg, "train", progress=False)
    assert store.n_trials == summ["n_trials"]["train"] == 18 and store.skipped == []


def test_statistics_and_determinism(tmp_path):
    a = write_release(tmp_path / "a", sessions=1, n_train=40, n_val=0, n_test=0, neural_dim=64, seed=7)
    b = write_release(tmp_path / "b", sessions=1, n_train=40, n_val=0, n_test=0, neural_dim=64, seed=7)
    c = write_release(tmp_path / "c", sessions=1, n_train=40, n_val=0, n_test=0, neural_dim=64, seed=8)
    p = f"{OFFICIAL_SESSIONS[0]}/data_train.hdf5"
    T, L, xs = [], [], []
    with h5py.File(tmp_path / "a" / p) as fa, h5py.File(tmp_path / "b" / p) as fb, h5py.File(tmp_path / "c" / p) as fc:
        for k in fa:
            x = fa[k]["input_features"][()]
            np.testing.assert_array_equal(x, fb[k]["input_features"][()])
            T.append(x.shape[0])
            L.append(int(fa[k].attrs["seq_len"]))
            xs.append(x)
        assert not np.array_equal(fa["trial_0000"]["input_features"][()], fc["trial_0000"]["input_features"][()])
    T, L = np.array(T), np.array(L)
    slope, icpt = np.polyfit(L, T, 1)
    assert 16 < slope < 25 and 140 < icpt < 280, (slope, icpt)   # T ~ 20.5 L + 206
    assert T.std() > 50                                          # spread
    x = np.concatenate(xs[20:])                                  # past the rolling window warm-up
    assert abs(x.mean()) < 0.1 and 0.85 < x.std() < 1.15, (x.mean(), x.std())
    # threshold crossings and spike-band power of the same electrode are correlated
    r = np.mean([np.corrcoef(x[:, e], x[:, 32 + e])[0, 1] for e in range(32)])
    assert r > 0.3, r
    # speech modulates the features: speech-period frames differ from the lead-in
    lead = np.concatenate([s[:80] for s in xs]).mean(0)
    speech = np.concatenate([s[250:350] for s in xs]).mean(0)
    assert np.abs(speech - lead).mean() > 0.2


def test_lexicon_covers_every_phoneme():
    used = {p for v in LEXICON.values() for p in v}
    assert used == set(PHONEMES[1:40])
    assert 100 <= len(LEXICON) <= 250


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="neural_dim must be an even number"):
        write_release(tmp_path, sessions=1, n_train=1, neural_dim=7)
    with pytest.raises(ValueError, match="n_val has 1 entries for 2 sessions"):
        write_release(tmp_path, sessions=2, n_train=1, n_val=[1])
    with pytest.raises(ValueError, match="n_train must be >= 1"):
        write_release(tmp_path, sessions=1, n_train=0)


def test_cli(tmp_path, capsys):
    assert fastbci(["synth", "--out", str(tmp_path / "r"), "--small", "--neural-dim", "8", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 sessions (1 train-only), neural_dim 8" in out and "train 18, val 4, test 4" in out
    assert fastbci(["synth", "--out", str(tmp_path / "r"), "--small", "--neural-dim", "9"]) == 2
    assert "neural_dim must be an even number" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "-m", "fastbci.synth", "--out", str(tmp_path / "m"), "--small",
                        "--sessions", "2", "--n-train", "2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "2 sessions (1 train-only)" in r.stdout and "train 4" in r.stdout


def test_signal_is_decodable_and_session_drift_matters():
    """Frames at the centre of each phoneme token, smoothed as in training, are linearly decodable
    on held-out trials (well above the majority class), and less so across sessions."""
    from fastbci.synth import simulate_session
    taps = np.array([0.02763055, 0.06628225, 0.12383153, 0.18017381, 0.20416369,
                     0.18017381, 0.12383153, 0.06628225, 0.02763055])

    def frames(trials):
        X, y = [], []
        for t, centres in trials:
            xs = np.stack([np.convolve(t.input_features[:, c], taps, "same")
                           for c in range(t.input_features.shape[1])], 1)
            X.append(xs[centres])
            y.append(t.seq_class_ids[:t.seq_len])
        return np.concatenate(X), np.concatenate(y)

    X, y = frames(simulate_session(80, neural_dim=128, seed=1))
    cut = int(0.7 * len(y))
    W = np.linalg.solve(X[:cut].T @ X[:cut] + 10 * np.eye(X.shape[1]), X[:cut].T @ np.eye(41)[y[:cut]])
    acc = float(((X[cut:] @ W).argmax(1) == y[cut:]).mean())
    chance = np.bincount(y).max() / len(y)
    assert acc > max(0.6, 2 * chance), (acc, chance)
    # another session (same templates, different drift) decoded with this session's weights
    X2, y2 = frames(simulate_session(30, neural_dim=128, seed=1, session="other", drift=3.0))
    # (same seed: same templates; drift x3 changes the session mixing and offset)
    acc2 = float(((X2 @ W).argmax(1) == y2).mean())
    assert acc2 < acc, (acc2, acc)


def test_train_corpus_is_the_normalised_train_sentences(small):
    """corpus_train.txt: every train sentence (no val or test one) as the evaluation
    normalises it, one a line, in the order the trials were made."""
    from fastbci.data import read_session_file
    from fastbci.lm.text import normalize
    root, summ = small
    lines = (root / "corpus_train.txt").read_text().splitlines()
    assert summ["corpus"] == str(root / "corpus_train.txt")
    assert len(lines) == summ["n_trials"]["train"]
    want = []
    for s in PRESETS["small"]["sessions"]:
        want += [normalize(t.sentence_label) for t in read_session_file(root / s / "data_train.hdf5", "train")]
    assert lines == want
    assert all(line == line.lower() and "." not in line and line.split() for line in lines)
    assert set(w for line in lines for w in line.split()) <= set(LEXICON)


def test_release_records_its_generation_parameters(tmp_path):
    """synth_params.json holds what the release was written with (the demo compares it), and a
    folder without it reads as None, not as an error."""
    write_release(tmp_path / "r", sessions=2, n_train=1, n_val=0, n_test=0, neural_dim=8,
                  seed=3, signal=2.5, noise=0.7, drift=0.5)
    p = read_params(tmp_path / "r")
    assert p == {"seed": 3, "neural_dim": 8, "signal": 2.5, "noise": 0.7, "drift": 0.5,
                 "min_words": 2, "max_words": 6, "sessions": list(OFFICIAL_SESSIONS[:2]),
                 "n_train": 1, "n_val": 0, "n_test": 0, "train_only": ["t15.2023.08.11"],
                 "block_size": [20, 50], "holdout": 0, "write_config": True}
    assert read_params(tmp_path) is None
