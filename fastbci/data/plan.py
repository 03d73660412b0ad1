"""The official batch plans (docs/recipe.md section 2).

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
the days of batch ``k`` in that order. The train plan is a :class:`TrainBatchPlan` with the same
interface, drawn :data:`CHUNK` batches at a time as it is read, so that its memory does not grow
with the number of batches (the official 120,000 or a billion).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["BatchPlan", "TrainBatchPlan", "train_batch_plan", "val_batch_plan"]

#: the most batches a plan can index (int64)
MAX_BATCHES = 2 ** 63 - 1


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

    def chunks(self):
        """The plan as consecutive :class:`BatchPlan` pieces (here: itself, whole)."""
        yield self

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
                      days_per_batch: int, must_include_days,
                      day_names: Sequence[str] | None = None) -> list[int]:
    """The arguments of :func:`train_batch_plan` checked; returns ``must_include_days`` with
    negative days counted from the end."""
    n_days = len(days_arr)
    if not 0 <= n_batches <= MAX_BATCHES:
        raise ValueError(f"n_batches (num_training_batches) must be in 0..{MAX_BATCHES} (int64), "
                         f"got {n_batches}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n_days == 0:
        raise ValueError("trials_by_day is empty: no days to draw from")
    if day_names is not None and len(day_names) != n_days:
        raise ValueError(f"day_names has {len(day_names)} entries for {n_days} days")
    if not 1 <= days_per_batch <= n_days:
        raise ValueError(f"days_per_batch = {days_per_batch} must be in 1..{n_days} (the number of days)")
    must = [int(d) + n_days if int(d) < 0 else int(d) for d in (must_include_days or [])]
    if len(must) > days_per_batch:
        raise ValueError(f"must_include_days {list(must_include_days)} names more days than "
                         f"days_per_batch = {days_per_batch}")
    for d in must:
        if not 0 <= d < n_days:
            raise ValueError(f"must_include_days: day {d} does not exist (days 0..{n_days - 1})")
    # a day that can be drawn must have trials (the official np.random.choice would fail on it);
    # without must_include_days every day can be drawn, with them every day still can
    empty = [d for d in range(n_days) if days_arr[d].size == 0]
    if empty:
        if day_names is None:
            raise ValueError(f"day(s) {empty} have no training trials but can be drawn into a "
                             "batch; remove them from the configuration (or give them trials)")
        listed = "; ".join(str(day_names[d]) for d in empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise ValueError(f"{len(empty)} session(s) have no training trial but can be drawn into a "
                         f"batch: {listed}; remove them from dataset.sessions (with their "
                         "dataset_probability_val entries) or give them trials")
    return must


def train_batch_plan(trials_by_day: Sequence[Sequence[int]], n_batches: int, batch_size: int,
                     days_per_batch: int, seed: int | None,
                     must_include_days: Sequence[int] | None = None, *,
                     rng: np.random.RandomState | None = None,
                     day_names: Sequence[str] | None = None) -> "TrainBatchPlan":
    """The official train batch plan (see the module docstring), drawn on demand.

    ``trials_by_day[d]``: the rows of day ``d`` (the official list of trial indices of that day;
    rows are drawn from it exactly as the official draws trial indices). ``seed``: the draws use
    a private ``np.random.RandomState(seed)``, identical to the official ``np.random.seed(seed)``
    followed by ``np.random.choice`` but without touching numpy's global generator; ``seed=None``
    or ``-1`` draws from the global generator in its current state (the official
    ``random_seed=-1``). ``rng``: draw from this generator instead (the compat dataset passes the
    global one after seeding it, to leave the same global state as the official code).
    Negative ``must_include_days`` count from the end, as in the official dataset.
    ``day_names``: what to call each day in errors (e.g. ``"session t15.2023.08.11
    (/data/t15.2023.08.11/data_train.hdf5)"``); default ``day d``.

    The batches are the official ones, but only :data:`CHUNK` of them are held at a time (see
    :class:`TrainBatchPlan`): memory does not grow with ``n_batches``. Drawing from a shared
    generator (``seed`` None / -1, or ``rng``) still advances it here, by the whole plan, as
    the official code does (time proportional to ``n_batches``, memory constant).
    """
    days_arr = _as_day_arrays(trials_by_day)
    must = _check_train_plan(days_arr, n_batches, batch_size, days_per_batch, must_include_days,
                             day_names)
    shared = rng if rng is not None else (_global_rng() if seed is None or seed == -1 else None)
    private = np.random.RandomState(0)
    if shared is None:
        private.seed(seed)
    else:
        private.set_state(shared.get_state())
    plan = TrainBatchPlan(_Drawer(days_arr, batch_size, days_per_batch, must), int(n_batches),
                          private)
    if shared is not None:
        plan.advance(shared)
    return plan


class _Drawer:
    """Draws consecutive train batches from a generator, consuming it exactly as the official
    ``np.random.choice`` calls do (module docstring)."""

    def __init__(self, days_arr: list[np.ndarray], batch_size: int, days_per_batch: int,
                 must: list[int]):
        self.n_days = len(days_arr)
        self.sizes = np.asarray([a.size for a in days_arr], dtype=np.int64)
        self.first = np.concatenate(([0], np.cumsum(self.sizes)[:-1])).astype(np.int64)
        big = any(a.size and int(a.max()) >= 2 ** 31 for a in days_arr)
        self.flat = np.concatenate(days_arr).astype(np.int64 if big else np.int32)
        self.days_per_batch = days_per_batch
        self.n_per_day = math.ceil(batch_size / days_per_batch)
        self.extra = self.n_per_day * days_per_batch - batch_size
        self.must = np.asarray(must, dtype=np.int64)
        self.others = np.asarray([d for d in range(len(days_arr)) if d not in must], dtype=np.int64)
        self.n_rest = days_per_batch - len(must)

    def _days(self, permutation) -> np.ndarray:
        if self.must.size:
            # np.random.choice(others, size=n_rest, replace=False) == others[permutation(len)[:n_rest]]
            return np.concatenate((self.must, self.others[permutation(self.others.size)[:self.n_rest]]))
        return permutation(self.n_days)[:self.days_per_batch]

    def draw(self, rng: np.random.RandomState, n: int) -> BatchPlan:
        """The next ``n`` batches of ``rng``'s stream. Per batch: the days, then one
        ``randint`` with a row of ``n_per_day`` draws per day (the official per-day
        ``np.random.choice(..., replace=True)`` calls, day after day, consume the generator
        identically), then the drops; the rows are gathered once for all ``n`` batches."""
        permutation, randint = rng.permutation, rng.randint
        npd, dpb, sizes = self.n_per_day, self.days_per_batch, self.sizes
        days_out = np.empty((n, dpb), dtype=np.int64)
        picks = np.empty((n, dpb, npd), dtype=np.int64)
        counts = np.full((n, dpb), npd, dtype=np.int64)
        for k in range(n):
            days = self._days(permutation)
            days_out[k] = days
            picks[k] = randint(0, sizes[days][:, None], size=(dpb, npd))
            for _ in range(self.extra):
                j = randint(0, dpb)  # np.random.choice(days) picks days[j]
                if counts[k, j] > 0:
                    counts[k, j] -= 1
        rows = self.flat[self.first[days_out][:, :, None] + picks]
        if self.extra > 0:  # the last trials of the days that lost some
            rows = rows[np.arange(npd) < counts[:, :, None]]
        starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts.sum(axis=1), out=starts[1:])
        return BatchPlan(rows.reshape(-1), starts, days_out, counts, "train")


#: batches drawn and held together by a :class:`TrainBatchPlan`
CHUNK = 4096
#: generator states a :class:`TrainBatchPlan` keeps (thinned as the plan is read further)
MAX_STATES = 64


class TrainBatchPlan:
    """The official train plan, drawn :data:`CHUNK` batches at a time when first read.

    ``plan[k]`` (int64 store rows), ``plan.days[k]``, ``plan.day_counts[k]``,
    ``plan.batch_day_index(k)`` and ``len(plan)`` as for a :class:`BatchPlan`, with the same
    batches as drawing the whole plan at once. One chunk is held at a time, plus up to
    :data:`MAX_STATES` generator states at chunk starts, so memory does not grow with the
    number of batches. Reading in order (the trainer) draws every batch once. Batch ``k`` of a
    fresh plan (a resumed run) first draws the batches before it, as the official sequential
    draws require: time proportional to ``k``, at constant memory; a later read at or after an
    earlier position restarts from the nearest kept state.
    """

    split = "train"

    def __init__(self, drawer: _Drawer, n_batches: int, rng: np.random.RandomState):
        self._drawer = drawer
        self._n = n_batches
        self._rng = rng                # stands at the start of chunk self._rng_chunk
        self._rng_chunk = 0
        self._states = {0: rng.get_state()}
        self._every = 1                # states are kept at chunks that are multiples of this
        self._chunk_id = -1
        self._chunk: BatchPlan | None = None
        self.days = _PerBatch(self, "days")
        self.day_counts = _PerBatch(self, "day_counts")

    def __len__(self) -> int:
        return self._n

    def _index(self, k: int) -> int:
        n = self._n
        if not -n <= k < n:
            raise IndexError(f"batch {k} out of range for a plan of {n} batches")
        return int(k) % n

    def _keep_state(self) -> None:
        c = self._rng_chunk
        if c % self._every or c in self._states:
            return
        self._states[c] = self._rng.get_state()
        if len(self._states) > MAX_STATES:
            self._every *= 2
            self._states = {i: s for i, s in self._states.items() if i % self._every == 0}

    def _draw_next(self) -> BatchPlan:
        c = self._rng_chunk
        chunk = self._drawer.draw(self._rng, min(CHUNK, self._n - c * CHUNK))
        self._rng_chunk = c + 1
        self._keep_state()
        return chunk

    def chunk(self, c: int) -> BatchPlan:
        """Batches ``c * CHUNK`` .. ``(c + 1) * CHUNK - 1`` as a :class:`BatchPlan`."""
        if c == self._chunk_id:
            return self._chunk
        if not 0 <= c * CHUNK < self._n:
            raise IndexError(f"chunk {c} out of range for a plan of {self._n} batches")
        start = max(i for i in self._states if i <= c)
        if not start <= self._rng_chunk <= c:  # restart from the nearest kept state
            self._rng.set_state(self._states[start])
            self._rng_chunk = start
        while self._rng_chunk < c:
            self._draw_next()
        self._chunk, self._chunk_id = self._draw_next(), c
        return self._chunk

    def chunks(self):
        """Every chunk in order (each a :class:`BatchPlan` of up to :data:`CHUNK` batches)."""
        for c in range((self._n + CHUNK - 1) // CHUNK):
            yield self.chunk(c)

    def advance(self, rng: np.random.RandomState) -> None:
        """Draw the whole plan from ``rng`` (which stands where this plan's generator started),
        keeping the states at chunk starts: ``rng`` ends where drawing the plan at once would
        leave it."""
        own = self._rng
        self._rng, self._rng_chunk = rng, 0
        try:
            for _ in range((self._n + CHUNK - 1) // CHUNK):
                self._draw_next()
        finally:
            self._rng, self._rng_chunk = own, 0
            own.set_state(self._states[0])

    def __getitem__(self, k: int) -> np.ndarray:
        k = self._index(k)
        return self.chunk(k // CHUNK)[k % CHUNK]

    def __iter__(self):
        for chunk in self.chunks():
            yield from chunk

    def batch_day_index(self, k: int) -> np.ndarray:
        """The day of every trial of batch ``k`` (as laid out in ``plan[k]``)."""
        k = self._index(k)
        return self.chunk(k // CHUNK).batch_day_index(k % CHUNK)

    def __repr__(self) -> str:
        return f"TrainBatchPlan({self._n} batches, drawn {CHUNK} at a time)"


class _PerBatch:
    """``plan.days[k]`` / ``plan.day_counts[k]`` of a :class:`TrainBatchPlan`."""

    def __init__(self, plan: TrainBatchPlan, name: str):
        self._plan, self._name = plan, name

    def __len__(self) -> int:
        return len(self._plan)

    def __getitem__(self, k: int) -> np.ndarray:
        k = self._plan._index(k)
        return getattr(self._plan.chunk(k // CHUNK), self._name)[k % CHUNK]


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
