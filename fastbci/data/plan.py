"""The official batch plans (docs/recipe.md section 2), drawn once, up front.

Train: with numpy's legacy generator seeded with ``dataset.seed``, for every batch in order

1. ``days = np.random.choice(day ids, size=days_per_batch, replace=False)``; with
   ``must_include_days``: those days first, then ``np.random.choice(other days,
   size=days_per_batch - len(must), replace=False)``;
2. ``n = ceil(batch_size / days_per_batch)``; for each day of ``days`` in that order,
   ``np.random.choice(that day's trials, size=n, replace=True)``;
3. while the batch holds more than ``batch_size`` trials: ``d = np.random.choice(days)`` and the
   last trial of day ``d`` is dropped (a day already emptied stays empty, the count still goes
   down, as in the official loop).

The draws here consume the generator exactly as ``np.random.choice`` does (for ``replace=False``
a full ``permutation`` of the population, for ``replace=True`` one ``randint`` call), so the same
seed gives the same trials in every batch as the official ``BrainToTextDataset``, without its
per-call overhead. Val: each day in order, its trials in file order cut into consecutive chunks
of ``batch_size``, one day per batch; ``day_mask`` leaves out days whose
``dataset_probability_val`` is 0 (the official trainer skips those batches in ``validation``).

A :class:`BatchPlan` holds store rows (global trial ids of a :class:`~fastbci.data.TrialStore`):
``plan[k]`` is the rows of batch ``k`` laid out day by day in drawn order and ``plan.days[k]``
the days of batch ``k`` in that order.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["BatchPlan", "train_batch_plan", "val_batch_plan"]


class BatchPlan:
    """An ordered list of batches of store rows.

    Stored flat: ``rows`` (all batches concatenated), ``starts`` (``n_batches + 1`` offsets) and
    per batch the days in drawn order (``days[k]``) with their trial counts (``day_counts[k]``;
    a train plan holds both as ``(n_batches, days_per_batch)`` arrays).
    """

    def __init__(self, rows: np.ndarray, starts: np.ndarray, days: Sequence[np.ndarray],
                 day_counts: Sequence[np.ndarray], split: str):
        self.rows = rows
        self.starts = starts
        self.days = days
        self.day_counts = day_counts
        self.split = split

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, k: int) -> np.ndarray:
        n = len(self)
        if not -n <= k < n:
            raise IndexError(f"batch {k} out of range for a plan of {n} batches")
        k %= n
        return self.rows[self.starts[k]:self.starts[k + 1]].astype(np.int64)

    def __iter__(self):
        for k in range(len(self)):
            yield self[k]

    def batch_day_index(self, k: int) -> np.ndarray:
        """The day of every trial of batch ``k`` (as laid out in ``plan[k]``)."""
        return np.repeat(self.days[k], self.day_counts[k])

    def __repr__(self) -> str:
        return f"BatchPlan({self.split}, {len(self)} batches, {len(self.rows)} trials)"


def _as_day_arrays(trials_by_day: Sequence[Sequence[int]]) -> list[np.ndarray]:
    out = []
    for d, t in enumerate(trials_by_day):
        a = np.asarray(t)
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            raise ValueError(f"trials_by_day[{d}] must be a 1-D sequence of integer row ids, "
                             f"got shape {a.shape} dtype {a.dtype}")
        out.append(a.astype(np.int64, copy=False))
    return out


def _global_rng() -> np.random.RandomState:
    """numpy's legacy global generator (the one ``np.random.seed`` / ``np.random.choice`` use)."""
    return np.random.mtrand._rand


def _check_train_plan(days_arr: list[np.ndarray], n_batches: int, batch_size: int,
                      days_per_batch: int, must_include_days) -> list[int]:
    """The arguments of :func:`train_batch_plan` checked; returns ``must_include_days`` with
    negative days counted from the end."""
    n_days = len(days_arr)
    if n_batches < 0:
        raise ValueError(f"n_batches must be >= 0, got {n_batches}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n_days == 0:
        raise ValueError("trials_by_day is empty: no days to draw from")
    if not 1 <= days_per_batch <= n_days:
        raise ValueError(f"days_per_batch = {days_per_batch} must be in 1..{n_days} (the number of days)")
    must = [int(d) + n_days if int(d) < 0 else int(d) for d in (must_include_days or [])]
    if len(must) > days_per_batch:
        raise ValueError(f"must_include_days {list(must_include_days)} names more days than "
                         f"days_per_batch = {days_per_batch}")
    for d in must:
        if not 0 <= d < n_days:
            raise ValueError(f"must_include_days: day {d} does not exist (days 0..{n_days - 1})")
    # a day that can be drawn must have trials (the official np.random.choice would fail on it)
    candidates = must + [d for d in range(n_days) if d not in must] if must else list(range(n_days))
    empty = [d for d in candidates if days_arr[d].size == 0]
    if empty:
        raise ValueError(f"day(s) {empty} have no training trials but can be drawn into a batch; "
                         "remove them from the configuration (or give them trials)")
    return must


def train_batch_plan(trials_by_day: Sequence[Sequence[int]], n_batches: int, batch_size: int,
                     days_per_batch: int, seed: int | None,
                     must_include_days: Sequence[int] | None = None, *,
                     rng: np.random.RandomState | None = None) -> BatchPlan:
    """Draw the official train batch plan (see the module docstring).

    ``trials_by_day[d]``: the rows of day ``d`` (the official list of trial indices of that day;
    rows are drawn from it exactly as the official draws trial indices). ``seed``: the draws use
    a private ``np.random.RandomState(seed)``, identical to the official ``np.random.seed(seed)``
    followed by ``np.random.choice`` but without touching numpy's global generator; ``seed=None``
    or ``-1`` draws from the global generator in its current state (the official
    ``random_seed=-1``). ``rng``: draw from this generator instead (the compat dataset passes the
    global one after seeding it, to leave the same global state as the official code).
    Negative ``must_include_days`` count from the end, as in the official dataset.
    """
    days_arr = _as_day_arrays(trials_by_day)
    must = _check_train_plan(days_arr, n_batches, batch_size, days_per_batch, must_include_days)
    n_days = len(days_arr)
    if rng is None:
        rng = _global_rng() if seed is None or seed == -1 else np.random.RandomState(seed)

    n_per_day = math.ceil(batch_size / days_per_batch)
    permutation = rng.permutation
    randint = rng.randint
    sizes = [a.size for a in days_arr]
    use_must = len(must) > 0
    if use_must:
        must_arr = np.asarray(must, dtype=np.int64)
        others = np.asarray([d for d in range(n_days) if d not in must], dtype=np.int64)
        n_rest = days_per_batch - len(must)

    width = n_per_day * days_per_batch
    dtype = np.int32 if sum(sizes) and max(int(a.max()) for a in days_arr if a.size) < 2 ** 31 else np.int64
    rows = np.empty(n_batches * width, dtype=dtype)
    days_out = np.empty((n_batches, days_per_batch), dtype=np.int64)
    counts_out = np.full((n_batches, days_per_batch), n_per_day, dtype=np.int64)
    starts = np.zeros(n_batches + 1, dtype=np.int64)
    extra0 = width - batch_size
    pos = 0
    for k in range(n_batches):
        if use_must:
            # np.random.choice(others, size=n_rest, replace=False) == others[permutation(len)[:n_rest]]
            days = np.concatenate((must_arr, others[permutation(others.size)[:n_rest]]))
        else:
            days = permutation(n_days)[:days_per_batch]
        days_out[k] = days
        if extra0 <= 0:
            for d in days:
                rows[pos:pos + n_per_day] = days_arr[d][randint(0, sizes[d], size=n_per_day)]
                pos += n_per_day
        else:
            parts = [days_arr[d][randint(0, sizes[d], size=n_per_day)] for d in days]
            lens = counts_out[k]
            for _ in range(extra0):
                j = randint(0, days_per_batch)  # np.random.choice(days) picks days[j]
                if lens[j] > 0:
                    lens[j] -= 1
            for p, m in zip(parts, lens):
                rows[pos:pos + m] = p[:m]
                pos += m
        starts[k + 1] = pos
    rows = rows[:pos]
    all_days = days_out
    all_counts = counts_out
    return BatchPlan(rows, starts, all_days, all_counts, "train")


def val_batch_plan(trials_by_day: Sequence[Sequence[int]], batch_size: int,
                   day_mask: Sequence[bool] | None = None) -> BatchPlan:
    """The official validation batches: day by day, trials in order, chunks of ``batch_size``.

    ``day_mask[d]`` false leaves day ``d`` out (pass ``[p != 0 for p in
    dataset_probability_val]`` to reproduce the batches the official trainer evaluates). Days with
    no trials give no batch.
    """
    days_arr = _as_day_arrays(trials_by_day)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if day_mask is not None and len(day_mask) != len(days_arr):
        raise ValueError(f"day_mask has {len(day_mask)} entries but there are {len(days_arr)} days")
    rows_parts, counts, all_days, all_counts = [], [], [], []
    for d, a in enumerate(days_arr):
        if day_mask is not None and not day_mask[d]:
            continue
        for s in range(0, a.size, batch_size):
            chunk = a[s:s + batch_size]
            rows_parts.append(chunk)
            counts.append(chunk.size)
            all_days.append(np.array([d], dtype=np.int64))
            all_counts.append(np.array([chunk.size], dtype=np.int64))
    rows = np.concatenate(rows_parts) if rows_parts else np.empty(0, np.int64)
    starts = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=starts[1:])
    return BatchPlan(rows, starts, all_days, all_counts, "val")
