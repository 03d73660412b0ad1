"""The files of a t15 release (the "hdf5_data_final" layout) and what can be wrong with them.

``<dataset_dir>/<session>/data_{train,val,test}.hdf5`` (docs/recipe.md section 1):
:func:`session_file` names one, :func:`session_paths` finds those of a configuration and
:func:`open_session_file` opens one. A path that is missing where a file is required, a
directory, a symbolic-link loop, unreadable, empty or not HDF5 is a :class:`DataError` that
names the session, the path and what it is (:func:`fastbci.fileio.path_problem`).

:class:`DataWarning` (bad trials skipped) is shown as one line, ``fastbci: warning: ...``,
without the line of fastbci's source that issued it.
"""
from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

from fastbci.errors import FastbciError
from fastbci.fileio import file_kind, name_problem, path_problem, shown_path

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
    """Bad trials were skipped under ``bad_trial_policy: skip`` (the message gives the count).
    Shown as ``fastbci: warning: MESSAGE`` on one line (:func:`_show_warning`)."""


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` for a :class:`DataWarning`: the message alone, without the
    line of fastbci's source that issued it; any other warning goes to the display in place
    before fastbci.data was imported."""
    if isinstance(category, type) and issubclass(category, DataWarning):
        stream = sys.stderr if file is None else file
        if stream is not None:
            try:
                stream.write(f"fastbci: warning: {message}\n")
            except OSError:  # a closed stderr: a warning is not worth an error
                pass
        return
    _show_warning.previous(message, category, filename, lineno, file, line)


def _install_warning_display() -> None:
    current = warnings.showwarning
    if (getattr(current, "__module__", None), getattr(current, "__name__", None)) \
            == (__name__, "_show_warning"):
        return  # in place (also after a reload of this module)
    _show_warning.previous = current
    warnings.showwarning = _show_warning


_install_warning_display()


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
def check_session_name(session: str) -> str:
    """``session``, which must be a plain folder name (no path separator, not ``..``, not
    empty: :func:`fastbci.fileio.name_problem`), or a :class:`DataError` naming it."""
    problem = name_problem(session)
    if problem is not None:
        raise DataError(f"session name {session!r} {problem}; a session is one folder of "
                        "dataset.dataset_dir, named like t15.2023.08.11", session=str(session),
                        reason="bad session name")
    return session


def session_file(dataset_dir: str | os.PathLike, session: str, split: str) -> Path:
    """``<dataset_dir>/<session>/data_<split>.hdf5`` (``session``: a plain folder name)."""
    return Path(dataset_dir) / check_session_name(session) / SPLIT_FILES[check_split(split)]


#: what a missing-data error tells the user to do
DATA_HINT = ("The official data is the 't15 copy task' release of the Brain-to-Text '25 benchmark "
             "(Dryad, doi:10.5061/dryad.dncjsxm85), folder hdf5_data_final: download it and pass "
             "dataset.dataset_dir=/path/to/hdf5_data_final. To try fastbci without it, make a "
             "synthetic release: fastbci synth --out data/synth, then "
             "fastbci train data/synth/synth_config.yaml (or run fastbci demo).")


def _check_dataset_dir(dataset_dir: Path) -> None:
    problem = path_problem(dataset_dir, want="dir")
    if problem is not None:
        raise DataError(f"dataset.dataset_dir {str(dataset_dir)!r} {problem} (resolved: "
                        f"{shown_path(dataset_dir)}). {DATA_HINT}", file=dataset_dir)


def session_paths(cfg: Mapping, split: str) -> list[Path | None]:
    """One path per configured session (``cfg["dataset"]["sessions"]``, in day order).

    ``None`` where the file is absent and that is allowed: a missing val or test file means zero
    trials for that day, as in the official trainer. A missing *train* file is an error naming
    the session and the path, and so is, for every split, a path that exists but cannot be read
    as a file (a directory, a symbolic-link loop or a broken link, no permission). Duplicate
    sessions are an error (the official trainer refuses them too).
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
        check_session_name(s)
        if s in seen:
            raise DataError(f"session {s!r} is listed twice in dataset.sessions", session=s)
        seen.add(s)
    _check_dataset_dir(dataset_dir)
    if split == "train" and sessions and not any(
            os.path.lexists(session_file(dataset_dir, s, split)) for s in sessions):
        raise DataError(f"dataset.dataset_dir {str(dataset_dir)!r} holds none of the configured "
                        f"sessions' training files (e.g. {session_file(dataset_dir, sessions[0], split)}): "
                        f"is it the release folder? {DATA_HINT}", file=dataset_dir)
    out: list[Path | None] = []
    for s in sessions:
        p = session_file(dataset_dir, s, split)
        problem = path_problem(p)
        if problem is None:
            out.append(p)
        elif os.path.lexists(p) or "link loop" in problem:  # there, but not a readable file
            raise DataError(f"session {s!r}: the {split} file {p} {problem}", session=s, file=p,
                            reason=problem)
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


def session_labels(sessions: Sequence[str], files: Sequence[str | os.PathLike | None]) -> list[str]:
    """How messages name each day: ``session t15.2023.08.11 (/data/.../data_train.hdf5)`` (pass
    as ``day_names`` to :func:`~fastbci.data.train_batch_plan`)."""
    return [f"session {s} ({f if f is not None else 'no file'})" for s, f in zip(sessions, files)]


def open_session_file(path: str | os.PathLike, session: str | None = None) -> "h5py.File":
    """Open an HDF5 file for reading, with an error naming the file (and the session) and what
    it is when it cannot be: missing, a directory, unreadable, empty, not HDF5, damaged."""
    path = Path(path)
    where = f" (session {session})" if session else ""
    problem = path_problem(path)
    if problem is not None:
        raise DataError(f"{path}{where} {problem}", session=session, file=path,
                        reason="missing file" if not os.path.lexists(path) else problem)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        kind = file_kind(path)
        what = (f"a corrupt HDF5 file (h5py: {' '.join(str(e).split())[:200]})"
                if kind == "an HDF5 file" else f"not an HDF5 file but {kind}")
        raise DataError(f"cannot open {path}{where}: it is {what}", session=session, file=path,
                        reason="corrupt file" if kind == "an HDF5 file" else "not HDF5") from None
