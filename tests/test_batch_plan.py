"""The official batch plans: same trials in every batch as the official draw order.

The reference sampler below is written from docs/recipe.md section 2, literally, with numpy's global
legacy generator and np.random.choice (dict of days -> trial lists, as the official dataset);
fastbci's plan must give the same batches, laid out day by day in drawn order.
"""
import math

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
    np.testing.assert_array_equal(np.random.get_state()[1], before,
                                  "a seeded plan must not touch the global generator")
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
    assert all(np.array_equal(plan2[k], plan[k]) for k in range(n_batches))


def test_train_plan_determinism_and_seed_sensitivity():
    rows = _rows_by_day([30] * 10)
    a = train_batch_plan(rows, 100, 64, 4, 1)
    b = train_batch_plan(rows, 100, 64, 4, 1)
    c = train_batch_plan(rows, 100, 64, 4, 2)
    assert all(np.array_equal(a[k], b[k]) for k in range(100))
    assert not all(np.array_equal(a[k], c[k]) for k in range(100))
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


# -- a plan drawn a chunk at a time: the same batches, memory independent of its length ----------
def _eager(rows, n_batches, bs, dpb, seed, must=None):
    """The whole plan drawn at once, batch by batch, with the official sampler above."""
    ref = official_style_train({d: list(r) for d, r in enumerate(rows)}, n_batches, bs, dpb,
                               seed, must)
    return [np.concatenate([np.asarray(v, dtype=np.int64) for v in b.values()]) for b in ref]


@pytest.mark.parametrize("sizes,n_batches,bs,dpb,must", [CASES[0], CASES[1], CASES[4], CASES[5]])
@pytest.mark.parametrize("seed", [1, 7, 12345])
def test_chunked_plan_equals_the_eager_plan_in_any_reading_order(sizes, n_batches, bs, dpb, must,
                                                                  seed, monkeypatch):
    from fastbci.data import plan as plan_mod
    monkeypatch.setattr(plan_mod, "CHUNK", 7)        # many chunk boundaries
    monkeypatch.setattr(plan_mod, "MAX_STATES", 3)   # and the kept states thinned
    rows = _rows_by_day(sizes, seed)
    want = _eager(rows, n_batches, bs, dpb, seed, must)
    order = list(range(n_batches))
    orders = [order, order[::-1], list(np.random.default_rng(seed).permutation(order)),
              [n_batches - 1, 0, n_batches // 2, 3, n_batches - 2, 1]]
    for reading in orders:
        plan = train_batch_plan(rows, n_batches, bs, dpb, seed, must)
        for k in reading:
            got = plan[k]
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, want[k], f"batch {k} (reading order {reading[:6]})")
            assert plan.day_counts[k].sum() == len(got)
            np.testing.assert_array_equal(np.repeat(plan.days[k], plan.day_counts[k]),
                                          plan.batch_day_index(k))
        assert len(plan._states) <= 3
    assert [b.tolist() for b in plan] == [w.tolist() for w in want]
    np.testing.assert_array_equal(plan[-1], want[-1])


def test_chunked_plan_from_the_global_generator_leaves_it_where_the_official_draws_do(monkeypatch):
    from fastbci.data import plan as plan_mod
    monkeypatch.setattr(plan_mod, "CHUNK", 5)
    rows = _rows_by_day([5, 9, 3, 12, 7], 3)
    np.random.seed(42)
    want = _eager(rows, 23, 10, 3, 42)
    after = np.random.get_state()[1].copy()
    np.random.seed(42)
    plan = train_batch_plan(rows, 23, 10, 3, -1)
    np.testing.assert_array_equal(np.random.get_state()[1], after)
    for k in (22, 0, 11, 4):  # reading does not touch the global generator again
        np.testing.assert_array_equal(plan[k], want[k])
    np.testing.assert_array_equal(np.random.get_state()[1], after)


def test_a_session_without_trials_is_named():
    rows = _rows_by_day([3, 0, 4])
    names = ["session a (a/data_train.hdf5)", "session b (b/data_train.hdf5)", "session c"]
    with pytest.raises(ValueError, match=r"session b \(b/data_train.hdf5\)") as e:
        train_batch_plan(rows, 2, 8, 2, 1, day_names=names)
    assert "session a" not in str(e.value) and "dataset.sessions" in str(e.value)
    with pytest.raises(ValueError, match="int64"):
        train_batch_plan(_rows_by_day([3, 3]), 2 ** 63, 8, 2, 1)


_BILLION = r'''
import resource, sys, time
import numpy as np
from fastbci.data import plan as plan_mod
from fastbci.data import train_batch_plan
rows = [np.arange(d * 180, (d + 1) * 180) for d in range(45)]
status = open("/proc/self/status").read()
vm = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmSize"))) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + CAP, vm + CAP))
t0 = time.perf_counter()
plan = train_batch_plan(rows, 1_000_000_000, 64, 4, 1)
assert len(plan) == 1_000_000_000
first = [plan[0], plan[1]]
deep = DEEP
b = plan[deep]
t1 = time.perf_counter()
assert len(first[0]) == len(first[1]) == len(b) == 64
import json
print(json.dumps({"deep": deep, "seconds": t1 - t0, "states": len(plan._states),
                  "batch0": first[0].tolist(), "batch1": first[1].tolist(), "deep_batch": b.tolist()}))
'''


def test_a_billion_batch_plan_fits_a_small_memory_cap():
    """1e9 batches: the plan built and read under an address-space cap of 200 MB above the
    interpreter's (drawing it all at once needs 256 GB of rows); a batch 5 chunks deep reads in
    seconds; batch 999,999,999 would first draw the 1e9 batches before it, as the official
    sequential draws require (hours, at the same memory)."""
    import subprocess
    import sys

    from fastbci.data import plan as plan_mod
    deep = 5 * plan_mod.CHUNK + 3
    code = _BILLION.replace("CAP", str(200 * 2 ** 20)).replace("DEEP", str(deep))
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json
    got = json.loads(proc.stdout)
    print(f"\n1e9-batch plan: batches 0, 1 and {deep} read in {got['seconds']:.1f} s, "
          f"{got['states']} generator states kept")
    # the same batches as a short plan of the same seed
    short = train_batch_plan([np.arange(d * 180, (d + 1) * 180) for d in range(45)], deep + 1,
                             64, 4, 1)
    assert got["batch0"] == short[0].tolist() and got["batch1"] == short[1].tolist()
    assert got["deep_batch"] == short[deep].tolist()
