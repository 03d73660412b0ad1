"""The official batch plans: same trials in every batch as the official draw order.

The reference sampler below is written from docs/recipe.md section 2, literally, with numpy's global
legacy generator and np.random.choice (dict of days -> trial lists, as the official dataset);
fastbci's plan must give the same batches, laid out day by day in drawn order.
"""
import math
import time

import numpy as np
import pytest

from fastbci.data import train_batch_plan, val_batch_plan


def official_style_train(trials: dict, n_batches, batch_size, days_per_batch, seed, must=None):
    np.random.seed(seed)
    plan = []
    for _ in range(n_batches):
        if must:
            others = [d for d in trials if d not in must]
            days = np.concatenate((must, np.random.choice(others, size=days_per_batch - len(must),
                                                          replace=False)))
        else:
            days = np.random.choice(list(trials.keys()), size=days_per_batch, replace=False)
        n = math.ceil(batch_size / days_per_batch)
        batch = {}
        for d in days:
            batch[d] = np.random.choice(trials[d], size=n, replace=True)
        extra = n * len(days) - batch_size
        while extra > 0:
            d = np.random.choice(days)
            batch[d] = batch[d][:-1]
            extra -= 1
        plan.append(batch)
    return plan


def _rows_by_day(sizes, seed=0):
    """Store-like row ids: day d owns a contiguous range, in a shuffled 'file' order."""
    rng = np.random.default_rng(seed)
    out, start = [], 0
    for n in sizes:
        out.append(start + rng.permutation(n))
        start += n
    return out


CASES = [  # sizes, n_batches, batch_size, days_per_batch, must_include_days
    ([5, 9, 3, 12, 7], 50, 64, 4, None),
    ([5, 9, 3, 12, 7], 50, 7, 3, None),       # 7 not divisible by 3: drops
    ([1, 2, 3, 4], 40, 2, 4, None),           # more days than trials: days emptied
    ([4] * 45, 20, 64, 4, None),              # official shape
    ([5, 9, 3, 12, 7], 30, 10, 3, [4, 1]),
    ([5, 9, 3, 12, 7], 30, 9, 2, [2, 0]),     # must_include_days == days_per_batch
    ([6, 6], 25, 1, 1, None),
]


@pytest.mark.parametrize("sizes,n_batches,bs,dpb,must", CASES)
@pytest.mark.parametrize("seed", [1, 12345])
def test_train_plan_equals_official_draws(sizes, n_batches, bs, dpb, must, seed):
    rows = _rows_by_day(sizes, seed)
    ref = official_style_train({d: list(r) for d, r in enumerate(rows)}, n_batches, bs, dpb, seed, must)
    state_after_ref = np.random.get_state()[1].copy()
    np.random.seed(999)
    before = np.random.get_state()[1].copy()
    plan = train_batch_plan(rows, n_batches, bs, dpb, seed, must)
    np.testing.assert_array_equal(np.random.get_state()[1], before, "a seeded plan must not touch the global generator")
    assert len(plan) == n_batches
    for k, batch in enumerate(ref):
        exp_rows = np.concatenate([np.asarray(v, dtype=np.int64) for v in batch.values()])
        got = plan[k]
        assert got.dtype == np.int64
        if not np.array_equal(got, exp_rows):
            raise AssertionError(f"batch {k}: rows {got.tolist()} != official {exp_rows.tolist()}")
        assert plan.days[k].tolist() == [int(d) for d in batch.keys()], f"batch {k} day order"
        assert plan.day_counts[k].tolist() == [len(v) for v in batch.values()]
        exp_days = np.concatenate([[int(d)] * len(v) for d, v in batch.items()]).astype(np.int64)
        np.testing.assert_array_equal(plan.batch_day_index(k), exp_days)
    # drawing from the global generator (seed=None) leaves it where the official code leaves it
    np.random.seed(seed)
    plan2 = train_batch_plan(rows, n_batches, bs, dpb, None, must)
    np.testing.assert_array_equal(np.random.get_state()[1], state_after_ref)
    np.testing.assert_array_equal(plan2.rows, plan.rows)


def test_train_plan_determinism_and_seed_sensitivity():
    rows = _rows_by_day([30] * 10)
    a = train_batch_plan(rows, 100, 64, 4, 1)
    b = train_batch_plan(rows, 100, 64, 4, 1)
    c = train_batch_plan(rows, 100, 64, 4, 2)
    np.testing.assert_array_equal(a.rows, b.rows)
    assert not np.array_equal(a.rows, c.rows)
    assert all(len(a[k]) == 64 for k in range(100))
    assert all(len(np.unique(a.days[k])) == 4 for k in range(100))


def test_train_plan_errors():
    rows = _rows_by_day([3, 0, 4])
    with pytest.raises(ValueError, match=r"day\(s\) \[1\] have no training trials"):
        train_batch_plan(rows, 2, 8, 2, 1)
    with pytest.raises(ValueError, match="days_per_batch = 4 must be in 1..3"):
        train_batch_plan(_rows_by_day([3, 3, 3]), 2, 8, 4, 1)
    with pytest.raises(ValueError, match="more days than days_per_batch"):
        train_batch_plan(_rows_by_day([3, 3, 3]), 2, 8, 1, 1, must_include_days=[0, 1])
    with pytest.raises(ValueError, match="day 7 does not exist"):
        train_batch_plan(_rows_by_day([3, 3, 3]), 2, 8, 2, 1, must_include_days=[7])
    with pytest.raises(IndexError, match="out of range"):
        train_batch_plan(_rows_by_day([3, 3, 3]), 2, 8, 2, 1)[2]
    # negative must_include_days count from the end, as official
    p = train_batch_plan(_rows_by_day([3, 3, 3]), 5, 8, 2, 1, must_include_days=[-1])
    assert all(p.days[k][0] == 2 for k in range(5))


def official_style_val(trials: dict, batch_size):
    out = []
    for d in trials:
        t = trials[d]
        for i in range((len(t) + batch_size - 1) // batch_size):
            out.append({d: t[i * batch_size:(i + 1) * batch_size]})
    return out


@pytest.mark.parametrize("sizes,bs", [([5, 0, 64, 65, 1], 64), ([3, 7], 2), ([0, 0], 4), ([130], 64)])
def test_val_plan_equals_official(sizes, bs):
    rows = _rows_by_day(sizes)
    ref = official_style_val({d: list(r) for d, r in enumerate(rows)}, bs)
    plan = val_batch_plan(rows, bs)
    assert len(plan) == len(ref)
    for k, batch in enumerate(ref):
        (d, t), = batch.items()
        np.testing.assert_array_equal(plan[k], np.asarray(t, dtype=np.int64), f"val batch {k}")
        assert plan.days[k].tolist() == [d]
    # day_mask: the batches the official trainer evaluates (dataset_probability_val != 0)
    mask = [d % 2 == 0 for d in range(len(sizes))]
    masked = val_batch_plan(rows, bs, day_mask=mask)
    assert [m.tolist() for m in masked] == [np.asarray(list(b.values())[0]).tolist()
                                            for b in ref if mask[list(b.keys())[0]]]
    with pytest.raises(ValueError, match="day_mask has"):
        val_batch_plan(rows, bs, day_mask=[True] * (len(sizes) + 1))


def test_official_size_plan_is_fast():
    rows = _rows_by_day([180] * 45)
    t0 = time.perf_counter()
    plan = train_batch_plan(rows, 120_000, 64, 4, 1)
    dt = time.perf_counter() - t0
    print(f"\n120,000 train batches drawn in {dt:.2f} s")
    assert len(plan) == 120_000 and len(plan.rows) == 120_000 * 64
    assert dt < 30, f"drawing 120,000 batches took {dt:.1f} s"
