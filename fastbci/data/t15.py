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
always an error (:mod:`fastbci.data.files`: the paths, the errors, opening a file).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from fastbci.fileio import atomic_hdf5

# the release's files, paths and errors (re-exported: fastbci.data.t15 keeps its names)
from .files import (DATA_HINT, PAD_LEN, POLICIES, SPLIT_FILES, SPLITS, _TRIAL_RE,  # noqa: F401
                    BadTrial, DataError, DataWarning, check_policy, check_split, open_session_file,
                    session_file, session_paths, trial_name)

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
    (int32); ``seq_len`` defaults to the number of non-zero ids. The file is written whole or
    not at all (:func:`fastbci.fileio.atomic_hdf5`): a full disk is a
    :class:`~fastbci.fileio.StorageError` naming it, and leaves the previous file (or none).
    """
    check_split(split)
    path = Path(path)
    with atomic_hdf5(path) as f:
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
        return None, (f"seq_class_ids holds ids outside 1..{n_classes - 1}: {bad} (phoneme ids "
                      f"are 1..dataset.n_classes - 1, and dataset.n_classes is {n_classes})")
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

    Returns ``(array, None)`` or ``(None, reason)`` when HDF5 cannot read the data, it holds
    non-finite values, or (a wider float type in the file) values beyond float32's range.
    """
    src = None
    try:
        ds = f[meta.name]["input_features"]
        if feature_subset is None and out is not None and ds.dtype == np.float32:
            ds.read_direct(out)
            arr = out
        else:
            src = ds[()]
            if feature_subset is not None:
                src = src[:, list(feature_subset)]
            with np.errstate(over="ignore", invalid="ignore"):  # reported below, by position
                if out is not None:
                    out[...] = src
                    arr = out
                else:
                    arr = np.ascontiguousarray(src, dtype=np.float32)
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as e:
        return None, f"input_features unreadable ({type(e).__name__}: {e})"
    if not np.isfinite(arr).all():
        t, c = np.argwhere(~np.isfinite(arr))[0]
        if src is not None and np.isfinite(src[t, c]):
            return None, (f"input_features holds values beyond the float32 range (first at time "
                          f"{t}, feature {c}: {src[t, c]:.3g} as {src.dtype}); fastbci reads "
                          "features as float32")
        return None, f"input_features holds non-finite values (first at time {t}, feature {c})"
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
