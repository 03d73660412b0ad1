"""Reading, writing and validating t15 session files (the "hdf5_data_final" release layout).

Layout (docs/recipe.md section 1): ``<dataset_dir>/<session>/data_{train,val,test}.hdf5``; each file
holds groups ``trial_0000``, ``trial_0001``, ... numbered without gaps. Each group has

* dataset ``input_features`` float32 ``(n_time_steps, neural_dim)``;
* dataset ``seq_class_ids`` (int, ``(500,)``, phoneme ids zero-padded) and ``transcription``
  (int, ``(500,)``, ASCII codes zero-padded): train and val only;
* attributes ``n_time_steps``, ``block_num``, ``trial_num``, ``session`` and, train and val only,
  ``seq_len`` and ``sentence_label``.

Every problem found while reading is reported with the session, the file and the trial group:
a missing or misnamed group (numbering with gaps), a missing dataset or attribute, a feature
width that is not ``neural_dim``, an ``n_time_steps`` attribute that disagrees with the array, a
``seq_len`` larger than the padded ids or inconsistent with them (a zero inside the first
``seq_len`` ids, a non-zero after them, an id outside ``1..n_classes-1``), non-finite features,
or a dataset HDF5 cannot read. With ``policy="fail"`` (the default) the first one raises
:class:`DataError`; with ``policy="skip"`` the trial is left out and recorded as a
:class:`BadTrial` so that the caller can report the count. A file that cannot be opened at all is
always an error.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from fastbci.errors import FastbciError

try:
    import h5py
except ImportError as e:  # pragma: no cover - h5py is a hard dependency
    raise ImportError("fastbci.data needs h5py (pip install h5py)") from e

SPLITS = ("train", "val", "test")
SPLIT_FILES = {"train": "data_train.hdf5", "val": "data_val.hdf5", "test": "data_test.hdf5"}
PAD_LEN = 500  # seq_class_ids and transcription are zero-padded to this length
POLICIES = ("fail", "skip")
_TRIAL_RE = re.compile(r"^trial_(\d{4,})$")


class DataError(FastbciError, ValueError):
    """A problem with the data on disk; the message names the session, file and trial."""

    def __init__(self, message: str, *, session: str | None = None, file: str | os.PathLike | None = None,
                 trial: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.session = session
        self.file = None if file is None else str(file)
        self.trial = trial
        self.reason = reason


class DataWarning(UserWarning):
    """Bad trials were skipped under ``bad_trial_policy: skip`` (the message gives the count)."""


class BadTrial(NamedTuple):
    """A trial left out under ``bad_trial_policy: skip``: ``(session, file, trial, reason)``."""

    session: str
    file: str
    trial: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file} (session {self.session}), {self.trial}: {self.reason}"


def trial_name(index: int) -> str:
    """``3 -> "trial_0003"`` (the group name of trial ``index``)."""
    return f"trial_{int(index):04d}"


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"bad_trial_policy must be 'fail' or 'skip', got {policy!r}")
    return policy


# ---------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------
def session_file(dataset_dir: str | os.PathLike, session: str, split: str) -> Path:
    """``<dataset_dir>/<session>/data_<split>.hdf5``."""
    return Path(dataset_dir) / session / SPLIT_FILES[check_split(split)]


#: what a missing-data error tells the user to do
DATA_HINT = ("The official data is the 't15 copy task' release of the Brain-to-Text '25 benchmark "
             "(Dryad, doi:10.5061/dryad.dncjsxm85), folder hdf5_data_final: download it and pass "
             "dataset.dataset_dir=/path/to/hdf5_data_final. To try fastbci without it, make a "
             "synthetic release: python -m fastbci.synth --out data/synth, then "
             "python -m fastbci.train data/synth/synth_config.yaml (or run python -m fastbci.demo).")


def session_paths(cfg: Mapping, split: str) -> list[Path | None]:
    """One path per configured session (``cfg["dataset"]["sessions"]``, in day order).

    ``None`` where the file is absent and that is allowed: a missing val or test file means zero
    trials for that day, as in the official trainer. A missing *train* file is an error naming
    the session and the path. Duplicate sessions are an error (the official trainer refuses them
    too).
    """
    check_split(split)
    try:
        ds = cfg["dataset"]
        dataset_dir = Path(ds["dataset_dir"])
        sessions = list(ds["sessions"])
    except (KeyError, TypeError) as e:
        raise DataError(f"the configuration lacks dataset.{e.args[0] if e.args else 'dataset_dir/sessions'}; "
                        "it needs dataset.dataset_dir and dataset.sessions") from None
    seen = set()
    for s in sessions:
        if s in seen:
            raise DataError(f"session {s!r} is listed twice in dataset.sessions", session=s)
        seen.add(s)
    if not dataset_dir.is_dir():
        raise DataError(f"dataset.dataset_dir {str(dataset_dir)!r} is not a directory "
                        f"(resolved: {dataset_dir.resolve()}). {DATA_HINT}", file=dataset_dir)
    if split == "train" and sessions and not any(
            session_file(dataset_dir, s, split).is_file() for s in sessions):
        raise DataError(f"dataset.dataset_dir {str(dataset_dir)!r} holds none of the configured "
                        f"sessions' training files (e.g. {session_file(dataset_dir, sessions[0], split)}): "
                        f"is it the release folder? {DATA_HINT}", file=dataset_dir)
    out: list[Path | None] = []
    for s in sessions:
        p = session_file(dataset_dir, s, split)
        if p.is_file():
            out.append(p)
        elif split == "train":
            where = ("the session folder is missing" if not p.parent.is_dir()
                     else "the folder has no data_train.hdf5")
            raise DataError(f"session {s!r}: training file {p} not found ({where}); every configured "
                            "session needs a train file (remove the session from dataset.sessions, "
                            "with its dataset_probability_val entry, to leave it out)",
                            session=s, file=p, reason="missing train file")
        else:
            out.append(None)
    return out


# ---------------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------------
@dataclass
class TrialMeta:
    """Everything about one trial except its features (filled by :func:`scan_session_file`)."""

    index: int                      # group number: trial_0007 -> 7
    n_time_steps: int
    width: int                      # feature width in the file
    block_num: Any
    trial_num: Any
    session: str
    seq_class_ids: np.ndarray | None = None
    transcription: np.ndarray | None = None
    seq_len: Any = None
    sentence_label: str | None = None
    feature_dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    n_time_steps_attr: Any = None   # the attribute as stored (its dtype reaches the batch)

    @property
    def name(self) -> str:
        return trial_name(self.index)


@dataclass
class Trial:
    """One trial as written by :func:`write_session_file` / returned by :func:`read_session_file`."""

    input_features: np.ndarray
    block_num: int
    trial_num: int
    session: str
    seq_class_ids: np.ndarray | None = None
    transcription: np.ndarray | None = None
    seq_len: int | None = None
    sentence_label: str | None = None
    n_time_steps: int | None = None
    index: int | None = None

    def __post_init__(self):
        if self.n_time_steps is None:
            self.n_time_steps = int(np.shape(self.input_features)[0])


def _attr_str(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _attr_str(v.item())
    return str(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def write_session_file(path: str | os.PathLike, trials: Sequence[Trial | Mapping[str, Any]], split: str,
                       *, pad_len: int = PAD_LEN) -> Path:
    """Write one session file in the release layout; returns its path.

    ``trials`` are :class:`Trial` objects or mappings with the same field names. Groups are
    numbered ``trial_0000`` .. in the given order. For ``split="test"`` the label fields
    (``seq_class_ids``, ``transcription``, ``seq_len``, ``sentence_label``) are not written, as in
    the release. ``seq_class_ids`` and ``transcription`` shorter than ``pad_len`` are zero-padded
    (int32); ``seq_len`` defaults to the number of non-zero ids.
    """
    check_split(split)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for i, tr in enumerate(trials):
            tr = tr if isinstance(tr, Trial) else Trial(**dict(tr))
            x = np.ascontiguousarray(tr.input_features, dtype=np.float32)
            if x.ndim != 2:
                raise ValueError(f"trial {i} of {path}: input_features must be 2-D (time, features), "
                                 f"got shape {x.shape}")
            g = f.create_group(trial_name(i))
            g.create_dataset("input_features", data=x)
            g.attrs["n_time_steps"] = int(tr.n_time_steps)
            g.attrs["block_num"] = int(tr.block_num)
            g.attrs["trial_num"] = int(tr.trial_num)
            g.attrs["session"] = str(tr.session)
            if split == "test":
                continue
            for name in ("seq_class_ids", "transcription"):
                v = getattr(tr, name)
                if v is None:
                    raise ValueError(f"trial {i} of {path}: {name} is required for the {split} split")
                v = np.asarray(v).astype(np.int32).ravel()
                if v.size > pad_len:
                    raise ValueError(f"trial {i} of {path}: {name} has {v.size} entries, more than "
                                     f"the padded length {pad_len}")
                padded = np.zeros(pad_len, np.int32)
                padded[:v.size] = v
                g.create_dataset(name, data=padded)
            ids = np.asarray(tr.seq_class_ids).ravel()
            seq_len = int(np.count_nonzero(ids)) if tr.seq_len is None else int(tr.seq_len)
            g.attrs["seq_len"] = seq_len
            g.attrs["sentence_label"] = "" if tr.sentence_label is None else str(tr.sentence_label)
    return path


# ---------------------------------------------------------------------------------------------
# reading and validation
# ---------------------------------------------------------------------------------------------
class _Reporter:
    """Applies the bad-trial policy: raise, or record and go on."""

    def __init__(self, session: str, path: Path, policy: str, skipped: list | None):
        self.session = session
        self.path = path
        self.policy = check_policy(policy)
        self.skipped = skipped if skipped is not None else []

    def bad(self, trial: str, reason: str) -> None:
        if self.policy == "fail":
            raise DataError(f"{self.path} (session {self.session}), {trial}: {reason} "
                            "[set fastbci.bad_trial_policy: skip to leave bad trials out]",
                            session=self.session, file=self.path, trial=trial, reason=reason)
        self.skipped.append(BadTrial(self.session, str(self.path), trial, reason))


def open_session_file(path: str | os.PathLike, session: str | None = None) -> "h5py.File":
    """Open an HDF5 file for reading, with an error naming the file when it is corrupt."""
    path = Path(path)
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise DataError(f"file not found: {path}" + (f" (session {session})" if session else ""),
                        session=session, file=path, reason="missing file") from None
    except OSError as e:
        raise DataError(f"cannot open {path}" + (f" (session {session})" if session else "")
                        + f" as HDF5: the file is corrupt or not HDF5 ({e})",
                        session=session, file=path, reason="corrupt file") from None


def _trial_indices(f: "h5py.File", rep: _Reporter) -> list[int]:
    """Group numbers present in file order 0..n-1; gaps and stray names are reported."""
    found: dict[int, str] = {}
    for name in f.keys():
        m = _TRIAL_RE.match(name)
        if m is None:
            rep.bad(name, "unexpected top-level object (trial groups are named trial_0000, trial_0001, ...)")
            continue
        idx = int(m.group(1))
        if trial_name(idx) != name:
            rep.bad(name, f"malformed trial group name (expected {trial_name(idx)})")
            continue
        found[idx] = name
    if not found:
        return []
    n = max(found) + 1
    present = []
    for i in range(n):
        if i in found:
            present.append(i)
        else:
            rep.bad(trial_name(i), f"trial group missing: numbering is not contiguous "
                                   f"({len(found)} groups, highest {trial_name(n - 1)})")
    return present


def _scan_trial(g, idx: int, split: str, session: str, width_expected: int | None, n_classes: int,
                feature_subset: Sequence[int] | None) -> tuple[TrialMeta | None, str | None]:
    """Validate the metadata of one group; returns (meta, None) or (None, reason)."""
    if not isinstance(g, h5py.Group):
        return None, "is not an HDF5 group"
    if "input_features" not in g:
        return None, "dataset input_features missing"
    ds = g["input_features"]
    if not isinstance(ds, h5py.Dataset):
        return None, "input_features is not a dataset"
    if ds.ndim != 2:
        return None, f"input_features has shape {ds.shape}, expected (n_time_steps, features)"
    if ds.dtype.kind != "f":
        return None, f"input_features has dtype {ds.dtype}, expected float32"
    T, width = int(ds.shape[0]), int(ds.shape[1])
    if feature_subset is not None:
        bad = [c for c in feature_subset if not 0 <= c < width]
        if bad:
            return None, f"feature_subset indices {bad[:5]} are outside the file's {width} features"
    if width_expected is not None and width != width_expected:
        return None, f"feature width {width} does not match dataset.neural_dim = {width_expected}"
    if T < 1:
        return None, "input_features has zero time steps"
    attrs = g.attrs
    need = ["n_time_steps", "block_num", "trial_num"] + (["seq_len"] if split != "test" else [])
    missing = [a for a in need if a not in attrs]
    if missing:
        return None, f"attribute(s) {', '.join(missing)} missing"
    nts = attrs["n_time_steps"]
    if not _is_int(nts):
        return None, f"attribute n_time_steps = {nts!r} is not an integer"
    if int(nts) != T:
        return None, f"attribute n_time_steps = {int(nts)} does not match the input_features length {T}"
    meta = TrialMeta(index=idx, n_time_steps=T, width=width, block_num=attrs["block_num"],
                     trial_num=attrs["trial_num"],
                     session=_attr_str(attrs["session"]) if "session" in attrs else session,
                     feature_dtype=ds.dtype, n_time_steps_attr=nts)
    for a in ("block_num", "trial_num"):
        if not _is_int(attrs[a]):
            return None, f"attribute {a} = {attrs[a]!r} is not an integer"
    if split == "test":
        return meta, None
    for name in ("seq_class_ids", "transcription"):
        if name not in g or not isinstance(g[name], h5py.Dataset):
            return None, f"dataset {name} missing"
        if g[name].ndim != 1 or g[name].dtype.kind not in "iu":
            return None, f"{name} has shape {g[name].shape} and dtype {g[name].dtype}, expected 1-D integers"
    ids = g["seq_class_ids"][()]
    trans = g["transcription"][()]
    seq_len = attrs["seq_len"]
    if not _is_int(seq_len) or int(seq_len) < 0:
        return None, f"attribute seq_len = {seq_len!r} is not a non-negative integer"
    L = int(seq_len)
    if L > ids.shape[0]:
        return None, f"seq_len {L} is larger than the padded seq_class_ids length {ids.shape[0]}"
    head, tail = ids[:L], ids[L:]
    if np.any(head == 0):
        return None, (f"seq_len {L} is inconsistent with seq_class_ids: a zero (padding/blank) at "
                      f"position {int(np.argmax(head == 0))}, inside the first seq_len ids")
    if np.any(tail != 0):
        return None, (f"seq_len {L} is inconsistent with seq_class_ids: non-zero id at position "
                      f"{L + int(np.argmax(tail != 0))}, after the first seq_len ids")
    if np.any((head < 0) | (head >= n_classes)):
        bad = sorted(set(head[(head < 0) | (head >= n_classes)].tolist()))[:5]
        return None, f"seq_class_ids holds ids outside 1..{n_classes - 1}: {bad}"
    meta.seq_class_ids = ids
    meta.transcription = trans
    meta.seq_len = seq_len
    meta.sentence_label = _attr_str(attrs["sentence_label"]) if "sentence_label" in attrs else ""
    return meta, None


def _excluded(meta: TrialMeta, session: str, bad_trials_dict: Mapping | None) -> bool:
    """The official bad_trials_dict rule: {session: {str(block_num): [trial_num, ...]}}."""
    if not bad_trials_dict or session not in bad_trials_dict:
        return False
    blocks = bad_trials_dict[session]
    key = str(meta.block_num)
    return key in blocks and meta.trial_num in blocks[key]


def scan_session_file(f: "h5py.File", path: Path, split: str, session: str, *, neural_dim: int | None,
                      n_classes: int = 41, feature_subset: Sequence[int] | None = None,
                      policy: str = "fail", skipped: list | None = None,
                      bad_trials_dict: Mapping | None = None,
                      excluded: list | None = None,
                      indices: Sequence[int] | None = None) -> list[TrialMeta]:
    """Validate every trial's metadata of an open file; returns the good trials in file order.

    Bad trials raise (policy ``fail``) or are appended to ``skipped`` (policy ``skip``); trials
    named in ``bad_trials_dict`` are appended to ``excluded`` as ``(session, file, trial)``.
    ``indices``: check and return only these trial groups (in that order, each once), e.g. the
    trials an official trial-index dict lists; others in the file are not looked at.
    """
    check_split(split)
    rep = _Reporter(session, path, policy, skipped)
    metas = []
    if indices is None:
        wanted = _trial_indices(f, rep)
    else:
        wanted = []
        for idx in dict.fromkeys(int(i) for i in indices):
            if trial_name(idx) in f:
                wanted.append(idx)
            else:
                rep.bad(trial_name(idx), f"trial group requested but absent from the file "
                                         f"({len(f.keys())} groups)")
    for idx in wanted:
        name = trial_name(idx)
        try:
            meta, reason = _scan_trial(f[name], idx, split, session, neural_dim, n_classes, feature_subset)
        except (OSError, KeyError, RuntimeError, ValueError) as e:
            meta, reason = None, f"unreadable ({type(e).__name__}: {e})"
        if meta is None:
            rep.bad(name, reason)
            continue
        if _excluded(meta, session, bad_trials_dict):
            if excluded is not None:
                excluded.append((session, str(path), name))
            continue
        metas.append(meta)
    return metas


def read_features(f: "h5py.File", meta: TrialMeta, out: np.ndarray | None = None,
                  feature_subset: Sequence[int] | None = None) -> tuple[np.ndarray | None, str | None]:
    """Read one trial's features (into ``out`` when given, shape (T, C) float32, C-contiguous).

    Returns ``(array, None)`` or ``(None, reason)`` when HDF5 cannot read the data or it holds
    non-finite values.
    """
    try:
        ds = f[meta.name]["input_features"]
        if feature_subset is None and out is not None and ds.dtype == np.float32:
            ds.read_direct(out)
            arr = out
        else:
            arr = ds[()]
            if feature_subset is not None:
                arr = arr[:, list(feature_subset)]
            if out is not None:
                out[...] = arr
                arr = out
            else:
                arr = np.ascontiguousarray(arr, dtype=np.float32)
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as e:
        return None, f"input_features unreadable ({type(e).__name__}: {e})"
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        return None, f"input_features holds non-finite values (first at time {bad[0]}, feature {bad[1]})"
    return arr, None


def read_session_file(path: str | os.PathLike, split: str = "train", *, session: str | None = None,
                      neural_dim: int | None = None, n_classes: int = 41,
                      feature_subset: Sequence[int] | None = None, policy: str = "fail",
                      skipped: list | None = None) -> list[Trial]:
    """Read and validate a whole session file; returns its good trials in file order.

    ``session`` defaults to the name of the file's folder. See the module docstring for the
    checks; ``skipped`` collects the :class:`BadTrial` records under ``policy="skip"``.
    """
    path = Path(path)
    session = session or path.parent.name
    skipped = skipped if skipped is not None else []
    rep = _Reporter(session, path, policy, skipped)
    out = []
    with open_session_file(path, session) as f:
        for m in scan_session_file(f, path, split, session, neural_dim=neural_dim, n_classes=n_classes,
                                   feature_subset=feature_subset, policy=policy, skipped=skipped):
            x, reason = read_features(f, m, feature_subset=feature_subset)
            if x is None:
                rep.bad(m.name, reason)
                continue
            out.append(Trial(input_features=x, block_num=m.block_num, trial_num=m.trial_num,
                             session=m.session, seq_class_ids=m.seq_class_ids,
                             transcription=m.transcription, seq_len=m.seq_len,
                             sentence_label=m.sentence_label, n_time_steps=m.n_time_steps, index=m.index))
    return out
