"""TrialStore: a whole split in one packed tensor; a padded batch is ONE gather.

All trials of a split are read once into ``features`` of shape ``(N_total_steps, C)`` float32
(trial ``i`` occupies rows ``offsets[i] .. offsets[i+1]``), plus one all-zero row after the
last trial. :meth:`TrialStore.batch` builds, for the requested trials, the index
``offsets[row] + t`` where ``t < length[row]`` and the zero row elsewhere, and assembles the
zero-padded ``(B, T_max, C)`` batch with a single ``index_select`` (a host store: one native copy
of each trial's contiguous rows, ``fastbci::gather_padded_``): no Python loop of copies, no file
access. The store lives in host memory (pinned when a GPU is present, or shared memory for
DataLoader workers) or on a CUDA device.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .t15 import (BadTrial, DataError, DataWarning, TrialMeta, _Reporter, check_policy, check_split,
                  open_session_file, read_features, scan_session_file, session_paths)

__all__ = ["TrialStore", "SessionSource"]

# batch keys of the official BrainToTextDataset.__getitem__, in its order
BATCH_KEYS = ("input_features", "seq_class_ids", "n_time_steps", "phone_seq_lens", "day_indicies",
              "transcriptions", "block_nums", "trial_nums")
LABEL_KEYS = ("seq_class_ids", "phone_seq_lens", "transcriptions")


_GATHER: list = []


def _native_gather():
    """``torch.ops.fastbci.gather_padded_`` when the C++ extension is built, else None (looked
    up once)."""
    if not _GATHER:
        try:
            import fastbci._C  # noqa: F401  (its import registers the op)
            _GATHER.append(torch.ops.fastbci.gather_padded_)
        except (ImportError, AttributeError):
            _GATHER.append(None)
    return _GATHER[0]


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


def _int_tensor(values: list, what: str) -> torch.Tensor:
    """Like the official ``torch.tensor(list of attribute values)``: keeps the attribute dtype."""
    if not values:
        return torch.zeros(0, dtype=torch.int64)
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        raise DataError(f"attribute {what} holds non-integer values ({arr.dtype})")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _host(t: torch.Tensor) -> np.ndarray:
    """A host copy of a metadata tensor, made once when the store is built."""
    return t.detach().cpu().numpy().copy()


def _padded_stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """Stack 1-D integer arrays, zero-padding to the longest (as pad_sequence does)."""
    if not arrays:
        return torch.zeros((0, 0), dtype=torch.int32)
    width = max(a.shape[0] for a in arrays)
    dtype = np.result_type(*[a.dtype for a in arrays])
    out = np.zeros((len(arrays), width), dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, :a.shape[0]] = a
    return torch.from_numpy(out)


def _resolve_device(device: str | torch.device, nbytes: int) -> torch.device:
    if str(device) == "auto":
        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            return torch.device("cuda") if nbytes < 0.8 * free else torch.device("cpu")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"TrialStore: device {device!r} requested but CUDA is not available")
        free, _ = torch.cuda.mem_get_info(dev)
        if nbytes > free:
            raise RuntimeError(f"TrialStore: the split needs {nbytes / 2**30:.2f} GiB but {dev} has "
                               f"{free / 2**30:.2f} GiB free; use device 'auto' or 'cpu' "
                               "(fastbci.store_device) to keep it in pinned host memory")
    return dev


def trial_length_rule(patch_size: int, patch_stride: int, max_cut: int = 0):
    """A check that a trial is long enough for the model: one patch of ``patch_size`` steps
    after the largest random cut (``max_cut`` steps), and, with labels, as many patched frames
    as CTC needs to emit its phonemes (one per phoneme plus one blank between repeats).
    Returns ``check(meta) -> reason | None``."""
    def check(m: TrialMeta) -> str | None:
        T = int(m.n_time_steps)
        t_min = T - max_cut
        after = f" after a random cut of up to {max_cut} steps" if max_cut else ""
        if t_min < max(patch_size, 1):
            return (f"n_time_steps {T} leaves {t_min} steps{after}, shorter than one patch of "
                    f"{max(patch_size, 1)} steps (model.patch_size)")
        if m.seq_class_ids is None or m.seq_len is None:
            return None
        frames = (t_min - patch_size) // patch_stride + 1 if patch_size > 0 else t_min
        ids = np.asarray(m.seq_class_ids)[:int(m.seq_len)]
        need = len(ids) + int(np.count_nonzero(ids[1:] == ids[:-1]))
        if frames < need:
            return (f"too short for CTC: n_time_steps {T} gives {frames} output frames{after} "
                    f"for {len(ids)} phonemes, which need {need} (a blank between repeats); "
                    "its loss would be infinite")
        return None
    return check


def length_rule_of(cfg: Mapping, split: str):
    """:func:`trial_length_rule` for a configuration's patching and (train split) random cut."""
    m = cfg["model"]
    cut = int(cfg["dataset"]["data_transforms"]["random_cut"]) if split == "train" else 0
    return trial_length_rule(int(m["patch_size"]), int(m["patch_stride"]), max(cut - 1, 0))


def _scan_sources(sources, split: str, width: int | None, *, feature_subset, n_classes: int,
                  policy: str, bad_trials_dict, skipped: list, excluded: list, length_rule=None):
    """Pass 1 of :meth:`TrialStore.from_sources`: every trial's metadata, validated, without
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
                 device, pin_memory, progress: bool, policy: str, skipped: list):
    """Pass 2 of :meth:`TrialStore.from_sources`: the features of every trial of ``plan``,
    straight into one packed tensor (plus a zero sentinel row); returns it and the kept
    ``(row, source, TrialMeta)``."""
    dev = _resolve_device(device, (total + 1) * n_cols * 4)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    on_cuda = dev.type == "cuda"
    if on_cuda:
        packed = torch.empty((total + 1, n_cols), dtype=torch.float32, device=dev)
    else:
        packed = torch.empty((total + 1, n_cols), dtype=torch.float32,
                             pin_memory=bool(pin_memory) and torch.cuda.is_available())
    host = None if on_cuda else packed.numpy()
    cursor = 0
    kept: list[tuple[int, SessionSource, TrialMeta]] = []
    it = _progress(((s, m) for s, metas in plan for m in metas), n_total_trials,
                   f"loading {split}", progress)
    current_path, f = None, None
    staging = None
    try:
        for src, m in it:
            if src.path != current_path:
                if f is not None:
                    f.close()
                f = open_session_file(src.path, src.session)
                current_path = src.path
            T = m.n_time_steps
            if on_cuda:
                if staging is None or staging.shape[0] < T:
                    staging = torch.empty((max(T, 2048), n_cols), dtype=torch.float32,
                                          pin_memory=True)
                dest = staging.numpy()[:T]
            else:
                dest = host[cursor:cursor + T]
            x, reason = read_features(f, m, out=dest, feature_subset=feature_subset)
            if x is None:
                _Reporter(src.session, src.path, policy, skipped).bad(m.name, reason)
                continue
            if on_cuda:
                packed[cursor:cursor + T].copy_(staging[:T])
            cursor += T
            kept.append((len(kept), src, m))
    finally:
        if f is not None:
            f.close()
    packed = packed[:cursor + 1]
    packed[cursor].zero_()

    return packed, kept


class TrialStore:
    """One split of the t15 data, packed. Build it with :meth:`from_config` or :meth:`from_sources`.

    Attributes (``n`` trials, row ``i`` is trial ``i`` of the store):

    * ``features`` ``(N_total_steps, C)`` float32 on ``device``; ``offsets`` ``(n+1,)`` int64 and
      ``lengths`` ``(n,)`` int64 (torch, on ``device``); ``lengths_np`` the lengths on the host;
    * ``day`` ``(n,)`` int64 (day index); ``n_time_steps``, ``block_num``, ``trial_num`` (torch,
      the files' attribute dtype, as the official batch has them); ``trial_index`` (n,) the
      trial group number in its file (``trial_0007`` -> 7);
    * train / val only (``None`` for test): ``seq_class_ids`` ``(n, 500)`` and
      ``transcriptions`` ``(n, 500)`` in the files' integer dtype, ``seq_len`` ``(n,)``;
    * host (numpy) copies of the metadata a training step needs, so that no step reads the
      device: ``offsets_np``, ``lengths_np``, ``day_np``, ``block_num_np``, ``trial_num_np`` and,
      with labels, ``seq_len_np`` and ``seq_class_ids_np`` (None for test);
    * ``session`` and ``sentence_label``: lists of str per trial (``''`` labels for test);
    * ``sessions`` (per day), ``files`` (per day, None where absent), ``trials_by_day`` (per day,
      the store rows of that day in file order), ``n_days``, ``n_trials``;
    * ``skipped``: ``BadTrial(session, file, trial, reason)`` left out under policy ``skip``;
      ``excluded``: ``(session, file, trial)`` left out by ``bad_trials_dict``.
    """

    def __init__(self, packed: torch.Tensor, offsets: np.ndarray, day: np.ndarray, *, split: str,
                 sessions: list[str], files: list[Path | None], trials_by_day: list[np.ndarray],
                 n_time_steps: torch.Tensor, block_num: torch.Tensor, trial_num: torch.Tensor,
                 trial_index: np.ndarray, session: list[str], sentence_label: list[str],
                 seq_class_ids: torch.Tensor | None = None, seq_len: torch.Tensor | None = None,
                 transcriptions: torch.Tensor | None = None, skipped: list | None = None,
                 excluded: list | None = None):
        self._packed = packed
        self.split = split
        self.device = packed.device
        self.offsets_np = np.ascontiguousarray(offsets, dtype=np.int64)
        self.lengths_np = np.diff(self.offsets_np)
        self.offsets = torch.from_numpy(self.offsets_np.copy()).to(self.device)
        self.lengths = torch.from_numpy(self.lengths_np.copy()).to(self.device)
        self.day_np = np.ascontiguousarray(day, dtype=np.int64)
        self.day = torch.from_numpy(self.day_np.copy()).to(self.device)
        self.sessions = list(sessions)
        self.files = list(files)
        self.trials_by_day = [np.asarray(t, dtype=np.int64) for t in trials_by_day]
        self.n_time_steps = n_time_steps.to(self.device)
        self.block_num = block_num.to(self.device)
        self.trial_num = trial_num.to(self.device)
        self.trial_index = np.asarray(trial_index, dtype=np.int64)
        self.session = list(session)
        self.sentence_label = list(sentence_label)
        self.seq_class_ids = None if seq_class_ids is None else seq_class_ids.to(self.device)
        self.seq_len = None if seq_len is None else seq_len.to(self.device)
        self.transcriptions = None if transcriptions is None else transcriptions.to(self.device)
        self.block_num_np = _host(block_num)
        self.trial_num_np = _host(trial_num)
        self.seq_len_np = None if seq_len is None else _host(seq_len).astype(np.int64)
        self.seq_class_ids_np = None if seq_class_ids is None else _host(seq_class_ids)
        self.skipped: list[BadTrial] = list(skipped or [])
        self.excluded: list[tuple[str, str, str]] = list(excluded or [])
        if packed.ndim != 2 or packed.shape[0] != self.offsets_np[-1] + 1:
            raise ValueError(f"packed features must have shape (N_total_steps + 1, C) = "
                             f"({self.offsets_np[-1] + 1}, C), got {tuple(packed.shape)}")

    # -------------------------------------------------------------------------------------
    @property
    def features(self) -> torch.Tensor:
        """``(N_total_steps, C)`` float32: every trial's features back to back."""
        return self._packed[:-1]

    @property
    def n_trials(self) -> int:
        return len(self.lengths_np)

    @property
    def n_days(self) -> int:
        return len(self.sessions)

    @property
    def n_features(self) -> int:
        return int(self._packed.shape[1])

    @property
    def has_labels(self) -> bool:
        return self.seq_class_ids is not None

    def __len__(self) -> int:
        return self.n_trials

    def __repr__(self) -> str:
        return (f"TrialStore({self.split}: {self.n_trials} trials, {self.n_days} days, "
                f"{int(self.offsets_np[-1])} steps x {self.n_features} features, {self.device}"
                + (f", {len(self.skipped)} skipped" if self.skipped else "") + ")")

    def nbytes(self) -> int:
        return self._packed.numel() * self._packed.element_size()

    def summary(self) -> str:
        """A one-paragraph report: trials per day, skipped and excluded trials with reasons."""
        per_day = [len(t) for t in self.trials_by_day]
        lines = [f"{self.split}: {self.n_trials} trials from {sum(1 for n in per_day if n)} of "
                 f"{self.n_days} sessions, {int(self.offsets_np[-1])} time steps, "
                 f"{self.nbytes() / 2**30:.2f} GiB on {self.device}"]
        if self.skipped:
            lines.append(f"  {len(self.skipped)} bad trial(s) skipped (bad_trial_policy: skip):")
            lines += [f"    {b}" for b in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"    ... and {len(self.skipped) - 20} more (see store.skipped)")
        if self.excluded:
            lines.append(f"  {len(self.excluded)} trial(s) excluded by dataset.bad_trials_dict")
        return "\n".join(lines)

    # -------------------------------------------------------------------------------------
    def batch(self, rows: Sequence[int] | np.ndarray | torch.Tensor, pad_to: int | None = None,
              day_indicies: Sequence[int] | torch.Tensor | None = None,
              out: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The official batch dict for store rows ``rows`` (in that order), on the store's device.

        ``input_features`` ``(B, T_max, C)`` float32, zero-padded to the longest trial (or to
        ``pad_to`` time steps), assembled by one gather; ``seq_class_ids`` ``(B, 500)``,
        ``n_time_steps``, ``phone_seq_lens``, ``day_indicies`` (int64), ``transcriptions``
        ``(B, 500)``, ``block_nums``, ``trial_nums``. The label keys are absent for the test
        split. ``day_indicies`` overrides the stored day of each trial when given. ``out``: a
        contiguous float32 buffer on the store's device with at least ``B * T_max * C`` elements
        to gather the features into (reusing one buffer avoids the page faults of a fresh
        allocation on CPU; the returned features are then a view of it).
        """
        if isinstance(rows, torch.Tensor):
            rows_np = rows.detach().to("cpu", torch.int64).numpy()
        else:
            rows_np = np.asarray(rows, dtype=np.int64) if len(rows) else np.zeros(0, np.int64)
        if rows_np.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {rows_np.shape}")
        n = self.n_trials
        if rows_np.size and (rows_np.min() < 0 or rows_np.max() >= n):
            bad = rows_np[(rows_np < 0) | (rows_np >= n)][:5].tolist()
            raise IndexError(f"rows {bad} out of range for a store of {n} trials")
        lens = self.lengths_np[rows_np]
        t_max = int(lens.max()) if lens.size else 0
        if pad_to is not None:
            if pad_to < t_max:
                raise ValueError(f"pad_to = {pad_to} is shorter than the longest trial of the "
                                 f"batch ({t_max})")
            t_max = int(pad_to)
        dev = self.device
        rows_t = torch.from_numpy(rows_np).to(dev, non_blocking=True)
        feats = self._gather_features(rows_t, t_max, out)
        out = {"input_features": feats}
        if self.has_labels:
            out["seq_class_ids"] = self.seq_class_ids.index_select(0, rows_t)
        out["n_time_steps"] = self.n_time_steps.index_select(0, rows_t)
        if self.has_labels:
            out["phone_seq_lens"] = self.seq_len.index_select(0, rows_t)
        if day_indicies is None:
            out["day_indicies"] = self.day.index_select(0, rows_t)
        else:
            out["day_indicies"] = torch.as_tensor(day_indicies, dtype=torch.int64).to(dev)
        if self.has_labels:
            out["transcriptions"] = self.transcriptions.index_select(0, rows_t)
        out["block_nums"] = self.block_num.index_select(0, rows_t)
        out["trial_nums"] = self.trial_num.index_select(0, rows_t)
        return out

    def _gather_features(self, rows_t: torch.Tensor, t_max: int,
                         out: torch.Tensor | None) -> torch.Tensor:
        """The zero-padded ``(B, t_max, C)`` features of store rows ``rows_t`` (checked), in a
        view of ``out`` when given. A host store uses the native ``fastbci::gather_padded_``
        (one copy of each trial's bytes and a memset of its padding); without the extension, and
        on a GPU, one ``index_select`` of the packed rows (padding read from the zero row)."""
        shape = (rows_t.shape[0], t_max, self.n_features)
        if out is not None:
            need = shape[0] * shape[1] * shape[2]
            if (out.dtype != torch.float32 or out.device != self.device or not out.is_contiguous()
                    or out.numel() < need):
                raise ValueError(f"out must be a contiguous float32 tensor on {self.device} with "
                                 f"at least {need} elements, got {out.dtype} {tuple(out.shape)} on "
                                 f"{out.device}")
            out = out.view(-1)[:need].view(shape)
        gather = _native_gather() if self.device.type == "cpu" else None
        if gather is not None:
            feats = torch.empty(shape, dtype=self._packed.dtype) if out is None else out
            return gather(self._packed, self.offsets, self.lengths, rows_t, t_max, feats)
        sentinel = int(self.offsets_np[-1])
        t = torch.arange(t_max, device=self.device)
        start = self.offsets.index_select(0, rows_t).unsqueeze(1)
        valid = t.unsqueeze(0) < self.lengths.index_select(0, rows_t).unsqueeze(1)
        idx = torch.where(valid, start + t.unsqueeze(0), sentinel).reshape(-1)
        if out is None:
            return self._packed.index_select(0, idx).view(shape)
        torch.index_select(self._packed, 0, idx, out=out.view(-1, shape[2]))
        return out

    def trial_ids(self, rows: Sequence[int]) -> list[str]:
        """``"SESSION block B trial T"`` for each store row (for messages)."""
        return [f"{self.session[r]} block {int(self.block_num_np[r])} trial "
                f"{int(self.trial_num_np[r])}" for r in rows]

    def trial(self, row: int) -> torch.Tensor:
        """The ``(T, C)`` features of one trial (a view)."""
        o = self.offsets_np
        return self._packed[o[row]:o[row + 1]]

    # -------------------------------------------------------------------------------------
    def _tensors(self) -> list[str]:
        return ["_packed", "offsets", "lengths", "day", "n_time_steps", "block_num", "trial_num",
                "seq_class_ids", "seq_len", "transcriptions"]

    def to(self, device: str | torch.device, non_blocking: bool = False) -> "TrialStore":
        """A copy of the store on ``device`` (metadata lists are shared)."""
        device = torch.device(device)
        new = object.__new__(TrialStore)
        new.__dict__.update(self.__dict__)
        for name in self._tensors():
            v = getattr(self, name)
            if v is not None:
                setattr(new, name, v.to(device, non_blocking=non_blocking))
        new.device = device
        return new

    def pin_memory(self) -> "TrialStore":
        """Move the packed features to pinned host memory (in place; needs CUDA)."""
        if self.device.type == "cpu" and torch.cuda.is_available() and not self._packed.is_pinned():
            self._packed = self._packed.pin_memory()
        return self

    def share_memory_(self) -> "TrialStore":
        """Move the CPU tensors to shared memory (in place), so that DataLoader workers index the
        same storage instead of receiving copies, whatever the multiprocessing start method."""
        if self.device.type == "cpu":
            for name in self._tensors():
                v = getattr(self, name)
                if v is not None:
                    v.share_memory_()
        return self

    # -------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping, split: str, device: str | torch.device = "cpu",
                    progress: bool = True, *, pin_memory: bool | None = None) -> "TrialStore":
        """Load ``split`` ("train", "val" or "test") of the configured sessions.

        Uses ``dataset.dataset_dir``, ``sessions`` (day index = position), ``neural_dim``,
        ``n_classes``, ``feature_subset`` (applied at load; then its length must equal
        ``neural_dim``), ``bad_trials_dict`` (official rule ``{session: {str(block):
        [trial_num]}}``; note that the official trainer ignores this key and passes None, fastbci
        applies it) and ``fastbci.bad_trial_policy``, which also covers trials too short for
        the model's patching or for CTC (:func:`length_rule_of`). Every existing file of the split is loaded,
        as the official trainer does: a missing val/test file gives zero trials for that day,
        and days whose ``dataset_probability_val`` is 0 are loaded too (the official trainer
        loads and batches them, then skips those batches in validation: pass ``day_mask`` to
        :func:`~fastbci.data.val_batch_plan`). ``device``: "cpu", "cuda", or "auto" (CUDA when
        the split fits in 80% of the free GPU memory). ``pin_memory`` (host stores): default
        True when CUDA is available.
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
        return cls.from_sources(sources, split, neural_dim=None if subset else neural_dim,
                                feature_subset=subset, n_classes=int(ds["n_classes"]),
                                bad_trials_dict=ds["bad_trials_dict"], policy=policy,
                                device=device, progress=progress, pin_memory=pin_memory,
                                length_rule=length_rule_of(cfg, split))

    @classmethod
    def from_sources(cls, sources: Sequence[SessionSource], split: str, *, neural_dim: int | None = None,
                     feature_subset: Sequence[int] | None = None, n_classes: int = 41,
                     bad_trials_dict: Mapping | None = None, policy: str = "fail",
                     device: str | torch.device = "cpu", progress: bool = False,
                     pin_memory: bool | None = None, length_rule=None) -> "TrialStore":
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
                                    feature_subset=feature_subset, device=device,
                                    pin_memory=pin_memory, progress=progress, policy=policy,
                                    skipped=skipped)
        # ---- metadata tensors ----
        lengths = np.fromiter((m.n_time_steps for _, _, m in kept), dtype=np.int64, count=len(kept))
        offsets = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        day = np.fromiter((s.day for _, s, _ in kept), dtype=np.int64, count=len(kept))
        pos = {id(s): i for i, s in enumerate(sources)}
        trials_by_day: list[list[int]] = [[] for _ in sources]
        for row, s, _ in kept:
            trials_by_day[pos[id(s)]].append(row)
        metas = [m for _, _, m in kept]
        labels = split != "test"
        if skipped:
            first = "; ".join(str(b) for b in skipped[:3])
            warnings.warn(f"{split}: {len(skipped)} bad trial(s) skipped under bad_trial_policy "
                          f"'skip' (store.skipped lists them all): {first}"
                          + (" ..." if len(skipped) > 3 else ""), DataWarning, stacklevel=3)
        return cls(
            packed, offsets, day, split=split, sessions=[s.session for s in sources],
            files=[s.path for s in sources],
            trials_by_day=[np.asarray(t, dtype=np.int64) for t in trials_by_day],
            n_time_steps=_int_tensor([m.n_time_steps_attr for m in metas], "n_time_steps"),
            block_num=_int_tensor([m.block_num for m in metas], "block_num"),
            trial_num=_int_tensor([m.trial_num for m in metas], "trial_num"),
            trial_index=np.fromiter((m.index for m in metas), dtype=np.int64, count=len(metas)),
            session=[m.session for m in metas],
            sentence_label=[(m.sentence_label or "") for m in metas],
            seq_class_ids=_padded_stack([m.seq_class_ids for m in metas]) if labels else None,
            seq_len=_int_tensor([m.seq_len for m in metas], "seq_len") if labels else None,
            transcriptions=_padded_stack([m.transcription for m in metas]) if labels else None,
            skipped=skipped, excluded=excluded)
