"""Loading a split: every trial of the configured sessions read once, checked, and packed into
one immutable :class:`PackedSplit` in host memory.

Pass 1 reads and validates every trial's metadata (no features); pass 2 reads the features of
the good trials straight into one ``(N_total_steps + 1, C)`` float32 tensor (trial ``i`` at rows
``offsets[i] .. offsets[i + 1]``, one all-zero row after the last trial). Bad trials are an error
naming the session, file and trial, or a counted skip under ``fastbci.bad_trial_policy=skip``.
Placing a split on a device is :class:`fastbci.data.TrialStore`'s job.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .lengths import length_rule_of, trial_length_rule  # noqa: F401  (re-exported)
from .t15 import (BadTrial, DataError, DataWarning, TrialMeta, _Reporter, check_policy, check_split,
                  open_session_file, read_features, scan_session_file, session_paths)

__all__ = ["PackedSplit", "SessionSource", "load_split", "load_sources", "trial_length_rule",
           "length_rule_of"]


class SessionSource:
    """One day to load: its day value, session name, file (None: zero trials) and optionally the
    exact trial group numbers to take, in order (None: every good trial in file order)."""

    __slots__ = ("day", "session", "path", "trials")

    def __init__(self, day: int, session: str, path: str | os.PathLike | None,
                 trials: Sequence[int] | None = None):
        self.day = int(day)
        self.session = session
        self.path = None if path is None else Path(path)
        self.trials = None if trials is None else [int(t) for t in trials]


def _progress(iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar over the trials being loaded, on a terminal only (in a log file or a pipe a
    redrawn bar is noise; the trainer logs the load time)."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="trial", leave=False)

def _ints(values: list, what: str) -> torch.Tensor:
    """Like the official ``torch.tensor(list of attribute values)``: keeps the attribute dtype."""
    if not values:
        return torch.zeros(0, dtype=torch.int64)
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        raise DataError(f"attribute {what} holds non-integer values ({arr.dtype})")
    return torch.from_numpy(np.ascontiguousarray(arr)).clone()


def _padded_stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """Stack 1-D integer arrays, zero-padding to the longest (as pad_sequence does)."""
    if not arrays:
        return torch.zeros((0, 0), dtype=torch.int32)
    width = max(a.shape[0] for a in arrays)
    out = np.zeros((len(arrays), width), dtype=np.result_type(*[a.dtype for a in arrays]))
    for i, a in enumerate(arrays):
        out[i, :a.shape[0]] = a
    return torch.from_numpy(out)


@dataclasses.dataclass(frozen=True)
class PackedSplit:
    """One split of the t15 data, packed in host memory as torch tensors; made by
    :func:`load_split` / :func:`load_sources` and never changed afterwards (a device copy is a
    :class:`~fastbci.data.TrialStore`). Row ``i`` is trial ``i`` of the split:

    * ``packed`` ``(N_total_steps + 1, C)`` float32, the last row zeros; ``offsets`` ``(n + 1,)``
      int64 and ``lengths`` ``(n,)`` int64 (time steps);
    * ``day`` ``(n,)`` int64 (position of the session in the configuration); ``n_time_steps``,
      ``block_num``, ``trial_num`` in the files' attribute dtype; ``trial_index`` the group
      number in its file (``trial_0007`` -> 7); ``session`` and ``sentence_label`` per trial;
    * train / val only (None for test): ``seq_class_ids`` and ``transcriptions`` ``(n, 500)``,
      ``seq_len`` ``(n,)``, in the files' integer dtype;
    * per day: ``sessions``, ``files`` (None where absent) and ``trials_by_day`` (its rows, in
      file order, numpy int64);
    * ``skipped``: ``BadTrial(session, file, trial, reason)`` left out under policy ``skip``;
      ``excluded``: ``(session, file, trial)`` left out by ``bad_trials_dict``.
    """
    split: str
    packed: torch.Tensor
    offsets: torch.Tensor
    day: torch.Tensor
    n_time_steps: torch.Tensor
    block_num: torch.Tensor
    trial_num: torch.Tensor
    trial_index: torch.Tensor
    session: tuple[str, ...]
    sentence_label: tuple[str, ...]
    seq_class_ids: torch.Tensor | None
    seq_len: torch.Tensor | None
    transcriptions: torch.Tensor | None
    sessions: tuple[str, ...]
    files: tuple[Path | None, ...]
    trials_by_day: tuple[np.ndarray, ...]
    skipped: tuple[BadTrial, ...] = ()
    excluded: tuple[tuple[str, str, str], ...] = ()
    lengths: torch.Tensor = dataclasses.field(init=False)

    #: the tensor fields (what moves to a device or to shared memory)
    TENSORS = ("packed", "offsets", "lengths", "day", "n_time_steps", "block_num", "trial_num",
               "trial_index", "seq_class_ids", "seq_len", "transcriptions")

    def __post_init__(self):
        if self.packed.ndim != 2 or self.packed.shape[0] != int(self.offsets[-1]) + 1:
            raise ValueError(f"packed features must have shape (N_total_steps + 1, C) = "
                             f"({int(self.offsets[-1]) + 1}, C), got {tuple(self.packed.shape)}")
        object.__setattr__(self, "lengths", self.offsets[1:] - self.offsets[:-1])

    @property
    def n_trials(self) -> int:
        return len(self.lengths)

    @property
    def has_labels(self) -> bool:
        return self.seq_class_ids is not None


def _scan_sources(sources, split: str, width: int | None, *, feature_subset, n_classes: int,
                  policy: str, bad_trials_dict, skipped: list, excluded: list, length_rule=None):
    """Pass 1 of :func:`load_sources`: every trial's metadata, validated, without
    reading features; returns ``[(source, [TrialMeta])]`` and the feature width."""
    plan: list[tuple[SessionSource, list[TrialMeta]]] = []
    for src in sources:
        if src.path is None or (src.trials is not None and not src.trials):
            if src.path is None and src.trials:
                raise DataError(f"session {src.session!r}: trials {src.trials[:5]} requested "
                                "but the session has no file", session=src.session)
            plan.append((src, []))
            continue
        with open_session_file(src.path, src.session) as f:
            metas = scan_session_file(f, src.path, split, src.session, neural_dim=width,
                                      n_classes=n_classes, feature_subset=feature_subset,
                                      policy=policy, skipped=skipped,
                                      bad_trials_dict=bad_trials_dict, excluded=excluded,
                                      indices=src.trials)
        rep = _Reporter(src.session, src.path, policy, skipped)
        if width is None and feature_subset is None:
            good = []
            for m in metas:
                if width is None:
                    width = m.width
                if m.width != width:
                    rep.bad(m.name, f"feature width {m.width} differs from the width {width} "
                                    "of the trials loaded before it")
                    continue
                good.append(m)
            metas = good
        if length_rule is not None:
            good = []
            for m in metas:
                reason = length_rule(m)
                if reason is None:
                    good.append(m)
                else:
                    rep.bad(m.name, reason)
            metas = good
        if src.trials is not None:
            # the requested trials in the requested order (repeats kept); bad ones (skipped)
            # and those excluded by bad_trials_dict are already recorded and left out
            by_index = {m.index: m for m in metas}
            metas = [by_index[t] for t in src.trials if t in by_index]
        plan.append((src, metas))
    return plan, width


def _read_packed(plan, split: str, n_cols: int, total: int, n_total_trials: int, *, feature_subset,
                 pin_memory: bool, progress: bool, policy: str, skipped: list):
    """Pass 2 of :func:`load_sources`: the features of every trial of ``plan``, straight into
    one packed host tensor (plus a zero sentinel row; page-locked with ``pin_memory`` when CUDA
    is there); returns it and the kept ``(row, source, TrialMeta)``."""
    packed = torch.empty((total + 1, n_cols), dtype=torch.float32,
                         pin_memory=bool(pin_memory) and torch.cuda.is_available())
    host = packed.numpy()
    cursor = 0
    kept: list[tuple[int, SessionSource, TrialMeta]] = []
    it = _progress(((s, m) for s, metas in plan for m in metas), n_total_trials,
                   f"loading {split}", progress)
    current_path, f = None, None
    try:
        for src, m in it:
            if src.path != current_path:
                if f is not None:
                    f.close()
                f = open_session_file(src.path, src.session)
                current_path = src.path
            T = m.n_time_steps
            x, reason = read_features(f, m, out=host[cursor:cursor + T],
                                      feature_subset=feature_subset)
            if x is None:
                _Reporter(src.session, src.path, policy, skipped).bad(m.name, reason)
                continue
            cursor += T
            kept.append((len(kept), src, m))
    finally:
        if f is not None:
            f.close()
    packed = packed[:cursor + 1]
    packed[cursor].zero_()
    return packed, kept



def load_split(cfg: Mapping, split: str, *, progress: bool = True,
               pin_memory: bool = False) -> PackedSplit:
    """Load ``split`` ("train", "val" or "test") of the configured sessions.

    Uses ``dataset.dataset_dir``, ``sessions`` (day index = position), ``neural_dim``,
    ``n_classes``, ``feature_subset`` (applied at load; then its length must equal
    ``neural_dim``), ``bad_trials_dict`` (official rule ``{session: {str(block):
    [trial_num]}}``; the official trainer ignores this key and passes None, fastbci applies it)
    and ``fastbci.bad_trial_policy``, which also covers trials too short for the model's
    patching or for CTC (:func:`length_rule_of`). Every existing file of the split is loaded,
    as the official trainer does: a missing val/test file gives zero trials for that day, and
    days whose ``dataset_probability_val`` is 0 are loaded too (the official trainer batches
    them, then skips them in validation). ``pin_memory``: page-locked host memory (with CUDA).
    """
    check_split(split)
    ds = cfg["dataset"]
    policy = check_policy(cfg["fastbci"]["bad_trial_policy"])
    neural_dim = int(ds["neural_dim"])
    subset = ds["feature_subset"] or None
    if subset is not None and len(subset) != neural_dim:
        raise DataError(f"dataset.feature_subset selects {len(subset)} features but "
                        f"dataset.neural_dim is {neural_dim}: set neural_dim (and "
                        f"model.n_input_features) to {len(subset)}")
    paths = session_paths(cfg, split)
    sources = [SessionSource(d, s, p) for d, (s, p) in enumerate(zip(ds["sessions"], paths))]
    return load_sources(sources, split, neural_dim=None if subset else neural_dim,
                        feature_subset=subset, n_classes=int(ds["n_classes"]),
                        bad_trials_dict=ds["bad_trials_dict"], policy=policy, progress=progress,
                        pin_memory=pin_memory, length_rule=length_rule_of(cfg, split))


def load_sources(sources: Sequence[SessionSource], split: str, *, neural_dim: int | None = None,
                 feature_subset: Sequence[int] | None = None, n_classes: int = 41,
                 bad_trials_dict: Mapping | None = None, policy: str = "fail",
                 progress: bool = False, pin_memory: bool = False,
                 length_rule=None) -> PackedSplit:
    """Load the given sessions (one :class:`SessionSource` per day, in day order).

    ``neural_dim=None`` accepts any width as long as every trial has the same one.
    ``length_rule``: a per-trial check (:func:`trial_length_rule`) applied under ``policy``.
    """
    check_split(split)
    check_policy(policy)
    skipped: list[BadTrial] = []
    excluded: list = []
    width = neural_dim if feature_subset is None else None
    plan, width = _scan_sources(sources, split, width, feature_subset=feature_subset,
                                n_classes=n_classes, policy=policy,
                                bad_trials_dict=bad_trials_dict, skipped=skipped,
                                excluded=excluded, length_rule=length_rule)
    n_cols = len(feature_subset) if feature_subset is not None else (width or 0)
    total = sum(m.n_time_steps for _, metas in plan for m in metas)
    n_total_trials = sum(len(metas) for _, metas in plan)
    packed, kept = _read_packed(plan, split, n_cols, total, n_total_trials,
                                feature_subset=feature_subset, pin_memory=pin_memory,
                                progress=progress, policy=policy, skipped=skipped)
    if skipped:
        first = "; ".join(str(b) for b in skipped[:3])
        warnings.warn(f"{split}: {len(skipped)} bad trial(s) skipped under bad_trial_policy "
                      f"'skip' (store.skipped lists them all): {first}"
                      + (" ..." if len(skipped) > 3 else ""), DataWarning, stacklevel=3)
    return _pack(split, sources, packed, kept, skipped, excluded)


def _pack(split: str, sources, packed: torch.Tensor, kept, skipped, excluded) -> PackedSplit:
    """The :class:`PackedSplit` of the kept ``(row, source, TrialMeta)``."""
    lengths = torch.tensor([m.n_time_steps for _, _, m in kept], dtype=torch.int64)
    offsets = torch.zeros(len(kept) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    pos = {id(s): i for i, s in enumerate(sources)}
    trials_by_day: list[list[int]] = [[] for _ in sources]
    for row, s, _ in kept:
        trials_by_day[pos[id(s)]].append(row)
    metas = [m for _, _, m in kept]
    labels = split != "test"
    return PackedSplit(
        split=split, packed=packed, offsets=offsets,
        day=torch.tensor([s.day for _, s, _ in kept], dtype=torch.int64),
        n_time_steps=_ints([m.n_time_steps_attr for m in metas], "n_time_steps"),
        block_num=_ints([m.block_num for m in metas], "block_num"),
        trial_num=_ints([m.trial_num for m in metas], "trial_num"),
        trial_index=torch.tensor([m.index for m in metas], dtype=torch.int64),
        session=tuple(m.session for m in metas),
        sentence_label=tuple((m.sentence_label or "") for m in metas),
        seq_class_ids=_padded_stack([m.seq_class_ids for m in metas]) if labels else None,
        seq_len=_ints([m.seq_len for m in metas], "seq_len") if labels else None,
        transcriptions=_padded_stack([m.transcription for m in metas]) if labels else None,
        sessions=tuple(s.session for s in sources), files=tuple(s.path for s in sources),
        trials_by_day=tuple(np.asarray(t, dtype=np.int64) for t in trials_by_day),
        skipped=tuple(skipped), excluded=tuple(excluded))
