"""t15 HDF5 io: write -> read round trip, split layout, session discovery, phoneme inventory."""
import h5py
import numpy as np
import pytest

from fastbci.config import load_config
from fastbci.data import (PHONEMES, DataError, Trial, ids_to_phonemes, phonemes_to_ids,
                          read_session_file, session_paths, write_session_file)


def _trials(rng, n, width, with_labels=True, lengths=None):
    out = []
    for i in range(n):
        T = int(lengths[i]) if lengths is not None else int(rng.integers(15, 60))
        L = int(rng.integers(1, 12))
        ids = rng.integers(1, 41, size=L).astype(np.int32)
        text = f"Sentence {i} here."
        out.append(Trial(input_features=rng.standard_normal((T, width)).astype(np.float32),
                         block_num=int(rng.integers(1, 9)), trial_num=2 * i + 1, session="t15.2023.08.13",
                         seq_class_ids=ids if with_labels else None,
                         transcription=np.frombuffer(text.encode(), np.uint8).astype(np.int32) if with_labels else None,
                         seq_len=L if with_labels else None, sentence_label=text if with_labels else None))
    return out


@pytest.mark.parametrize("width,n", [(512, 3), (7, 1), (32, 5)])
def test_round_trip_every_dataset_and_attr(tmp_path, width, n):
    rng = np.random.default_rng(width)
    trials = _trials(rng, n, width, lengths=[17, 1, 1025, 15, 33][:n])
    path = write_session_file(tmp_path / "t15.2023.08.13" / "data_train.hdf5", trials, "train")
    with h5py.File(path, "r") as f:
        assert sorted(f.keys()) == [f"trial_{i:04d}" for i in range(n)]
        for i, tr in enumerate(trials):
            g = f[f"trial_{i:04d}"]
            assert set(g.keys()) == {"input_features", "seq_class_ids", "transcription"}
            assert set(g.attrs.keys()) == {"n_time_steps", "seq_len", "block_num", "trial_num",
                                           "session", "sentence_label"}
            assert g["input_features"].dtype == np.float32
            assert g["seq_class_ids"].shape == (500,) and g["seq_class_ids"].dtype == np.int32
            assert g["transcription"].shape == (500,)
            assert g.attrs["n_time_steps"] == tr.input_features.shape[0]
    back = read_session_file(path, "train", neural_dim=width)
    assert len(back) == n
    for a, b in zip(trials, back):
        np.testing.assert_array_equal(a.input_features, b.input_features)
        ids = np.zeros(500, np.int32)
        ids[:a.seq_len] = a.seq_class_ids
        np.testing.assert_array_equal(ids, b.seq_class_ids)
        trans = np.zeros(500, np.int32)
        trans[:a.transcription.size] = a.transcription
        np.testing.assert_array_equal(trans, b.transcription)
        assert (b.n_time_steps, b.seq_len, b.block_num, b.trial_num, b.session, b.sentence_label) == \
               (a.input_features.shape[0], a.seq_len, a.block_num, a.trial_num, a.session, a.sentence_label)
        assert "".join(map(chr, b.transcription[b.transcription > 0])) == a.sentence_label


def test_test_split_has_no_labels(tmp_path):
    rng = np.random.default_rng(0)
    path = write_session_file(tmp_path / "s" / "data_test.hdf5", _trials(rng, 2, 8), "test")
    with h5py.File(path, "r") as f:
        g = f["trial_0001"]
        assert set(g.keys()) == {"input_features"}
        assert set(g.attrs.keys()) == {"n_time_steps", "block_num", "trial_num", "session"}
    back = read_session_file(path, "test")
    assert [b.seq_class_ids for b in back] == [None, None]
    # reading a test file as train reports the missing labels
    with pytest.raises(DataError, match="seq_len"):
        read_session_file(path, "train")


def _cfg(tmp_path, sessions):
    cfg = load_config()
    cfg["dataset"]["dataset_dir"] = str(tmp_path)
    cfg["dataset"]["sessions"] = list(sessions)
    return cfg


def test_session_paths(tmp_path):
    rng = np.random.default_rng(1)
    for s in ("t15.a", "t15.b"):
        write_session_file(tmp_path / s / "data_train.hdf5", _trials(rng, 1, 4), "train")
    write_session_file(tmp_path / "t15.b" / "data_val.hdf5", _trials(rng, 1, 4), "val")
    cfg = _cfg(tmp_path, ["t15.a", "t15.b"])
    assert session_paths(cfg, "train") == [tmp_path / "t15.a" / "data_train.hdf5",
                                            tmp_path / "t15.b" / "data_train.hdf5"]
    assert session_paths(cfg, "val") == [None, tmp_path / "t15.b" / "data_val.hdf5"]
    assert session_paths(cfg, "test") == [None, None]
    cfg = _cfg(tmp_path, ["t15.a", "t15.missing"])
    with pytest.raises(DataError, match=r"t15\.missing.*data_train\.hdf5") as e:
        session_paths(cfg, "train")
    assert e.value.session == "t15.missing"
    with pytest.raises(DataError, match="listed twice"):
        session_paths(_cfg(tmp_path, ["t15.a", "t15.a"]), "train")
    with pytest.raises(DataError, match=r"dataset.dataset_dir .*nope. not found"):
        session_paths(_cfg(tmp_path / "nope", ["t15.a"]), "train")
    with pytest.raises(ValueError, match="split"):
        session_paths(cfg, "validation")


def test_phoneme_inventory():
    assert len(PHONEMES) == 41 and PHONEMES[0] == "BLANK" and PHONEMES[40] == " | "
    assert PHONEMES[1:40] == tuple("AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG "
                                   "OW OY P R S SH T TH UH UW V W Y Z ZH".split())
    assert phonemes_to_ids(["HH", "AY1", " | "]) == [16, 6, 40]
    assert ids_to_phonemes([16, 6, 40]) == ["HH", "AY", " | "]
    with pytest.raises(ValueError, match="unknown phoneme"):
        phonemes_to_ids(["QQ"])
