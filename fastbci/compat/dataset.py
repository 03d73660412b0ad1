"""Drop-in replacements for the official ``dataset.py``: same names, signatures and outputs.

``BrainToTextDataset`` returns the same batches as the official one for the same seed (same
keys, dtypes and values, trials in the same order) and leaves numpy's and torch's global
generators in the same state, but it reads every listed trial once, at construction, into a
:class:`~fastbci.data.TrialStore` in shared memory: ``__getitem__`` is one native gather (a
memcpy per trial) into a reused buffer instead of re-opening the HDF5 files, and DataLoader
workers (the official ``batch_size=None, num_workers=4, pin_memory=True``) index the same shared
storage rather than receiving copies.

Differences, all on error paths: a bad or unreadable trial is a clear error at construction
(the official loader prints and silently drops it from that batch); a day that can be drawn
but has no trials and a ``must_include_days`` entry that is not a day are clear errors instead
of numpy/IndexError tracebacks (a file path without a ``t15.20..`` / ``t12.20..`` session folder
is fine here: its trials are labelled with the day key, as the batches carry no session name;
``train_test_split_indicies`` needs the folder and says so).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.plan import BatchPlan, TrainBatchPlan, train_batch_plan, val_batch_plan
from ..data.store import SessionSource, TrialStore
from ..data.t15 import DataError, open_session_file, trial_name

__all__ = ["BrainToTextDataset", "train_test_split_indicies", "official_batch"]

#: the batch keys of the official ``BrainToTextDataset.__getitem__``, in its order
BATCH_KEYS = ("input_features", "seq_class_ids", "n_time_steps", "phone_seq_lens", "day_indicies",
              "transcriptions", "block_nums", "trial_nums")


def official_batch(store: TrialStore, rows, pad_to: int | None = None,
                   out: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The official batch dict for store ``rows`` (in that order), on the store's device.

    ``input_features`` ``(B, T_max, C)`` float32 zero-padded to the longest trial (or ``pad_to``
    steps; gathered into ``out`` when given, see :meth:`TrialStore.gather`); ``seq_class_ids``
    ``(B, 500)``, ``n_time_steps``, ``phone_seq_lens``, ``day_indicies`` (int64),
    ``transcriptions`` ``(B, 500)``, ``block_nums``, ``trial_nums`` in the files' dtypes. The
    label keys are absent for the test split."""
    feats = store.gather(rows, pad_to=pad_to, out=out)
    r = store.check_rows(rows)
    host = {"seq_class_ids": store.seq_class_ids_np, "n_time_steps": store.n_time_steps_np,
            "phone_seq_lens": store.seq_len_np, "day_indicies": store.day_np,
            "transcriptions": store.transcriptions_np, "block_nums": store.block_num_np,
            "trial_nums": store.trial_num_np}
    batch = {"input_features": feats}
    for key in BATCH_KEYS[1:]:
        if host[key] is not None:
            batch[key] = torch.from_numpy(np.ascontiguousarray(host[key][r])).to(store.device)
    return batch


def _storage_users(t: torch.Tensor) -> int | None:
    """How many tensors (and other holders) share ``t``'s storage in this process; None when
    this build of torch cannot tell."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    return None if count is None else int(count(t.untyped_storage()._cdata))


class _FeatureBuffers:
    """Where ``__getitem__`` gathers a batch's features: reused host buffers, each handed out
    again only once nothing references it.

    A fresh ``(B, T_max, C)`` tensor per batch costs more (page faults on the first touch of
    ~100 MB) than the gather itself. In the process that assembles the batch (plain indexing, a
    DataLoader with ``num_workers=0``) a buffer is reused when no tensor views its storage any
    more (the caller dropped the batch; a tensor kept, a pinned copy being made or a ``.to()`` in
    progress all hold it); otherwise another buffer is used (up to ``slots``), then fresh tensors.
    In a DataLoader worker the batch goes to the main process, where its users cannot be seen:
    there every batch gets a fresh tensor, made directly in shared memory (the pickler then sends
    a handle instead of copying the batch into shared memory first).
    """

    def __init__(self, capacity: int, slots: int = 3):
        self.capacity = capacity  # elements: the largest batch of the plan
        self.slots = slots
        self._ring: list[tuple[torch.Tensor, int]] = []  # (buffer, its users when idle)

    def __getstate__(self):  # a copy (e.g. for a spawned worker) starts without buffers
        return {"capacity": self.capacity, "slots": self.slots, "_ring": []}

    def take(self, numel: int) -> torch.Tensor:
        """A contiguous float32 buffer of at least ``numel`` elements that no one else uses."""
        if torch.utils.data.get_worker_info() is not None:
            storage = torch.UntypedStorage._new_shared(numel * 4)
            return torch.empty(0, dtype=torch.float32).set_(storage, 0, (numel,), (1,))
        if numel <= self.capacity:
            for buf, idle in self._ring:
                if _storage_users(buf) == idle:
                    return buf
            if len(self._ring) < self.slots and _storage_users(torch.empty(0)) is not None:
                buf = torch.empty(self.capacity, dtype=torch.float32)
                self._ring.append((buf, _storage_users(buf)))
                return buf
        return torch.empty(numel, dtype=torch.float32)


def _session_of(path: str) -> str:
    parts = [s for s in str(path).split("/") if s.startswith("t15.20") or s.startswith("t12.20")]
    if not parts:
        raise ValueError(f"cannot find the session in path {path!r}: one folder of the path must be "
                         "a session name starting with 't15.20' or 't12.20' (as in the release)")
    return parts[0]


class BrainToTextDataset(Dataset):
    """Official-compatible dataset that returns a whole batch per index (see the module doc).

    ``trial_indicies``: ``{day: {'trials': [trial indices], 'session_path': path}}`` as returned
    by :func:`train_test_split_indicies`. ``split``: ``'train'`` (random batches drawn up front
    with the official draws) or ``'test'`` (every trial once, day by day, in chunks of
    ``batch_size``). ``random_seed != -1`` seeds numpy's and torch's global generators first, as
    the official constructor does.
    """

    def __init__(self, trial_indicies: Mapping[Any, Mapping[str, Any]], n_batches: int | None,
                 split: str = "train", batch_size: int = 64, days_per_batch: int | None = 1,
                 random_seed: int = -1, must_include_days: Sequence[int] | None = None,
                 feature_subset: Sequence[int] | None = None):
        if random_seed != -1:
            np.random.seed(random_seed)
            torch.manual_seed(random_seed)
        self.split = split
        if self.split not in ["train", "test"]:
            raise ValueError(f'split must be either "train" or "test". Received {self.split}')
        self.days_per_batch = days_per_batch
        self.batch_size = batch_size
        self.n_batches = n_batches
        self.trial_indicies = trial_indicies
        self.n_days = len(trial_indicies.keys())
        self.feature_subset = feature_subset
        self.n_trials = sum(len(trial_indicies[d]["trials"]) for d in trial_indicies)
        for d in trial_indicies:
            if "trials" not in trial_indicies[d] or "session_path" not in trial_indicies[d]:
                raise ValueError(f"trial_indicies[{d!r}] must hold 'trials' and 'session_path' "
                                 "(as returned by train_test_split_indicies)")

        if must_include_days is not None and len(must_include_days) > days_per_batch:
            raise ValueError(f"must_include_days must be less than or equal to days_per_batch. "
                             f"Received {must_include_days} and days_per_batch {days_per_batch}")
        if must_include_days is not None and len(must_include_days) > self.n_days and split != "train":
            raise ValueError(f"must_include_days is not valid for test data. Received "
                             f"{must_include_days} and but only {self.n_days} in the dataset")
        if must_include_days is not None:
            must_include_days = [self.n_days + d if d < 0 else d for d in must_include_days]
        self.must_include_days = must_include_days
        if self.split == "train" and self.days_per_batch > self.n_days:
            raise ValueError(f"Requested days_per_batch: {days_per_batch} is greater than available "
                             f"days {self.n_days}.")

        # every listed trial read once into a shared-memory store
        keys = list(trial_indicies.keys())
        self._keys = keys
        sources = []
        for k in keys:
            entry = trial_indicies[k]
            trials = [int(t) for t in entry["trials"]]
            path = entry["session_path"]
            if trials and not os.path.exists(path):
                raise DataError(f"day {k}: {len(trials)} trials listed but {path} does not exist",
                                file=path)
            try:
                session = _session_of(path)
            except ValueError:
                session = str(k)
            sources.append(SessionSource(int(k), session, path if trials else None, trials))
        subset = list(feature_subset) if feature_subset else None
        self.store = TrialStore.from_sources(sources, "train" if split == "train" else "val",
                                             neural_dim=None, feature_subset=subset, policy="fail",
                                             device="cpu", progress=False, pin_memory=False)
        self.store.share_memory_()

        if self.split == "train":
            must_pos = None
            if must_include_days is not None and len(must_include_days) > 0:
                pos = {k: i for i, k in enumerate(keys)}
                missing = [d for d in must_include_days if d not in pos]
                if missing:
                    raise ValueError(f"must_include_days {missing} are not days of trial_indicies "
                                     f"(days: {keys[:10]}{'...' if len(keys) > 10 else ''})")
                must_pos = [pos[d] for d in must_include_days]
            # the official draws use numpy's global generator (seeded above, or as it is when -1)
            self.plan: BatchPlan | TrainBatchPlan = train_batch_plan(
                self.store.trials_by_day, n_batches, batch_size, days_per_batch, seed=None,
                must_include_days=must_pos, rng=np.random.mtrand._rand)
        else:
            self.plan = val_batch_plan(self.store.trials_by_day, batch_size)
            self.n_batches = len(self.plan)
        self._buffers = _FeatureBuffers(self._largest_batch())

    def __len__(self) -> int:
        return self.n_batches

    def _largest_batch(self) -> int:
        """Elements of the plan's largest ``input_features`` (B * T_max * C), 0 for no batch."""
        largest = 0
        for part in self.plan.chunks():  # the train plan is drawn a chunk at a time
            if len(part) == 0 or len(part.rows) == 0:
                continue
            starts = np.asarray(part.starts[:-1], dtype=np.int64)
            sizes = np.diff(np.asarray(part.starts, dtype=np.int64))
            keep = sizes > 0
            t_max = np.maximum.reduceat(self.store.lengths_np[part.rows], starts[keep])
            largest = max(largest, int((sizes[keep] * t_max).max()))
        return largest * self.store.n_features

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        """The batch ``idx``: the official dict of padded tensors, its features gathered by the
        native kernel into a reused buffer (see :class:`_FeatureBuffers`)."""
        rows = self.plan[idx]
        if not len(rows):
            return official_batch(self.store, rows)
        numel = len(rows) * int(self.store.lengths_np[rows].max()) * self.store.n_features
        return official_batch(self.store, rows, out=self._buffers.take(numel))

    @property
    def batch_index(self) -> dict[int, dict[Any, np.ndarray | list]]:
        """The official ``batch_index`` (``{batch: {day: trial indices}}``), rebuilt from the plan
        on request (for inspection; ``__getitem__`` does not use it)."""
        out = {}
        tidx = self.store.trial_index
        for k in range(len(self.plan)):
            rows = self.plan[k]
            days, counts = self.plan.days[k], self.plan.day_counts[k]
            batch, start = {}, 0
            for d, c in zip(days, counts):
                key = self._keys[int(d)]
                vals = tidx[rows[start:start + c]]
                batch[key] = vals if self.split == "train" else vals.tolist()
                start += c
            out[k] = batch
        return out


def train_test_split_indicies(file_paths: Sequence[str], test_percentage: float = 0.1, seed: int = -1,
                              bad_trials_dict: Mapping | None = None):
    """Split the trials of each file into train and test index dicts, as the official function.

    Returns ``(train_trials, test_trials)``, each ``{day: {'trials': [...], 'session_path':
    path}}``, with the same numpy draws (``np.random.seed(seed)`` when ``seed != -1``, then one
    ``np.random.choice(..., replace=False)`` per day when ``0 < test_percentage < 1``). A missing
    file gives a day with no trials. Trial attributes are only read when ``bad_trials_dict`` is
    given (the official code reads them always, only to apply it).
    """
    if seed != -1:
        np.random.seed(seed)
    trials_per_day = {}
    for i, path in enumerate(file_paths):
        session = _session_of(path)
        good = []
        if os.path.exists(path):
            with open_session_file(path, session) as f:
                n = len(f.keys())
                names = set(f.keys())
                missing = [trial_name(t) for t in range(n) if trial_name(t) not in names]
                if missing:
                    raise DataError(f"{path} (session {session}): {n} groups but {missing[0]} is "
                                    "missing: trial numbering is not contiguous",
                                    session=session, file=path, trial=missing[0])
                if bad_trials_dict is None or session not in bad_trials_dict:
                    good = list(range(n))
                else:
                    blocks = bad_trials_dict[session]
                    for t in range(n):
                        try:
                            attrs = f[trial_name(t)].attrs
                            block_num, trial_num = attrs["block_num"], attrs["trial_num"]
                        except KeyError as e:
                            raise DataError(f"{path} (session {session}), {trial_name(t)}: attribute "
                                            f"missing ({e})", session=session, file=path,
                                            trial=trial_name(t)) from None
                        if str(block_num) in blocks and trial_num in blocks[str(block_num)]:
                            continue
                        good.append(t)
        trials_per_day[i] = {"num_trials": len(good), "trial_indices": good, "session_path": path}

    train_trials, test_trials = {}, {}
    for day, info in trials_per_day.items():
        all_idx = info["trial_indices"]
        path = info["session_path"]
        if test_percentage == 0:
            train_trials[day] = {"trials": all_idx, "session_path": path}
            test_trials[day] = {"trials": [], "session_path": path}
        elif test_percentage == 1:
            train_trials[day] = {"trials": [], "session_path": path}
            test_trials[day] = {"trials": all_idx, "session_path": path}
        else:
            if not all_idx:
                raise ValueError(f"day {day} ({path}) has no trials to split with test_percentage "
                                 f"{test_percentage} (missing file or every trial excluded)")
            num_test = max(1, int(info["num_trials"] * test_percentage))
            test_idx = np.random.choice(all_idx, size=num_test, replace=False).tolist()
            chosen = set(test_idx)
            train_trials[day] = {"trials": [t for t in all_idx if t not in chosen], "session_path": path}
            test_trials[day] = {"trials": test_idx, "session_path": path}
    return train_trials, test_trials
