"""Optimiser groups and learning-rate schedule of the trainer (docs/recipe.md section 5)."""
import math

import pytest
import torch

from fastbci import schedule
from fastbci.config import load_config


def _cfg(**over):
    items = {"lr_max": 0.01, "lr_min": 0.001, "lr_warmup_steps": 10, "lr_decay_steps": 50,
             "lr_max_day": 0.02, "lr_min_day": 0.0002, "lr_warmup_steps_day": 4,
             "lr_decay_steps_day": 30, "weight_decay": 0.001, "weight_decay_day": 0.0,
             **over}
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


def _expected_multiplier(s, lr_max, lr_min, warmup, decay):
    """docs/recipe.md section 5 in words: linear warm-up s/warmup, cosine from lr_max to lr_min until decay,
    then flat at lr_min."""
    r = lr_min / lr_max
    if s < warmup:
        return s / warmup
    if s >= decay:
        return r
    p = (s - warmup) / (decay - warmup)
    return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p))


class _Tiny(torch.nn.Module):
    """Parameter names as in the official model: day_weights.i, day_biases.i, gru.*, out.*, h0."""

    def __init__(self, n_days=3, c=4, h=5, layers=2):
        super().__init__()
        self.day_weights = torch.nn.ParameterList([torch.nn.Parameter(torch.eye(c)) for _ in range(n_days)])
        self.day_biases = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(1, c)) for _ in range(n_days)])
        self.gru = torch.nn.GRU(c, h, num_layers=layers, batch_first=True)
        self.out = torch.nn.Linear(h, 7)
        self.h0 = torch.nn.Parameter(torch.zeros(1, 1, h))


@pytest.mark.parametrize("step", [0, 1, 5, 9, 10, 11, 23, 30, 49, 50, 51, 200])
def test_cosine_multiplier_matches_recipe(step):
    got = schedule.lr_multiplier(step, 0.001 / 0.01, 50, 10)
    want = _expected_multiplier(step, 0.01, 0.001, 10, 50)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15), f"step {step}: {got} vs {want}"


def test_warmup_and_flat_ends():
    assert schedule.lr_multiplier(0, 0.02, 100, 10) == 0.0
    assert schedule.lr_multiplier(5, 0.02, 100, 10) == 0.5
    assert schedule.lr_multiplier(10, 0.02, 100, 10) == 1.0
    mid = schedule.lr_multiplier(55, 0.02, 100, 10)
    assert mid == pytest.approx(0.02 + 0.98 * 0.5)
    for s in (100, 101, 10 ** 6):
        assert schedule.lr_multiplier(s, 0.02, 100, 10) == 0.02
    # warm-up 0: full rate at step 0
    assert schedule.lr_multiplier(0, 0.5, 10, 0) == 1.0


@pytest.mark.parametrize("steps", [[0, 1, 3, 4, 9, 10, 29, 30, 31, 49, 50, 60]])
def test_lambdalr_per_group_values(steps):
    cfg = _cfg()
    model = _Tiny()
    opt = schedule.make_optimizer(model, cfg, "cpu")
    sched = schedule.make_scheduler(opt, cfg)
    assert [g["group_type"] for g in opt.param_groups] == ["bias", "day_layer", "other"]
    seen = {}
    for s in range(max(steps) + 1):
        seen[s] = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
    for s in steps:
        want_main = 0.01 * _expected_multiplier(s, 0.01, 0.001, 10, 50)
        want_day = 0.02 * _expected_multiplier(s, 0.02, 0.0002, 4, 30)
        got = seen[s]
        assert got[0] == pytest.approx(want_main, rel=1e-9, abs=1e-15), f"bias group at step {s}"
        assert got[1] == pytest.approx(want_day, rel=1e-9, abs=1e-15), f"day group at step {s}"
        assert got[2] == pytest.approx(want_main, rel=1e-9, abs=1e-15), f"other group at step {s}"


def test_linear_schedule_matches_torch_linearlr():
    cfg = _cfg(lr_scheduler_type="linear", lr_decay_steps=20)
    model = _Tiny()
    opt = schedule.make_optimizer(model, cfg, "cpu")
    sched = schedule.make_scheduler(opt, cfg)
    ref_model = _Tiny()
    ref_opt = schedule.make_optimizer(ref_model, cfg, "cpu")
    ref = torch.optim.lr_scheduler.LinearLR(ref_opt, start_factor=1.0, end_factor=0.1, total_iters=20)
    for s in range(30):
        got = [g["lr"] for g in opt.param_groups]
        want = [g["lr"] for g in ref_opt.param_groups]
        assert got == pytest.approx(want, rel=1e-9), f"step {s}: {got} vs LinearLR {want}"
        opt.step(); sched.step(); ref_opt.step(); ref.step()


def test_param_groups_names_lrs_and_decay():
    cfg = _cfg(weight_decay=0.003, weight_decay_day=0.5)
    model = _Tiny(n_days=3, layers=2)
    groups = schedule.param_groups(model.named_parameters(), cfg)
    names = {g["group_type"]: g["names"] for g in groups}
    assert names["bias"] == ["gru.bias_ih_l0", "gru.bias_hh_l0", "gru.bias_ih_l1", "gru.bias_hh_l1",
                             "out.bias"]
    assert names["day_layer"] == [f"day_weights.{i}" for i in range(3)] + [f"day_biases.{i}" for i in range(3)]
    # in named_parameters() order (a module's own parameters come before its children's)
    assert names["other"] == ["h0", "gru.weight_ih_l0", "gru.weight_hh_l0", "gru.weight_ih_l1",
                              "gru.weight_hh_l1", "out.weight"]
    n_all = sum(1 for _ in model.parameters())
    assert sum(len(v) for v in names.values()) == n_all, "every parameter in exactly one group"
    opt = schedule.make_optimizer(model, cfg, "cpu")
    g = {x["group_type"]: x for x in opt.param_groups}
    assert (g["bias"]["lr"], g["bias"]["weight_decay"]) == (0.01, 0.0)
    assert (g["day_layer"]["lr"], g["day_layer"]["weight_decay"]) == (0.02, 0.5)
    assert (g["other"]["lr"], g["other"]["weight_decay"]) == (0.01, 0.003)
    assert opt.defaults["eps"] == cfg["epsilon"] and opt.defaults["betas"] == (0.9, 0.999)


def test_param_groups_with_compile_prefix_and_without_days():
    cfg = _cfg()
    named = [("_orig_mod.gru.bias_ih_l0", torch.nn.Parameter(torch.zeros(2))),
             ("_orig_mod.out.weight", torch.nn.Parameter(torch.zeros(2, 2)))]
    groups = schedule.param_groups(named, cfg)
    assert [g["group_type"] for g in groups] == ["bias", "other"], "two groups without day layers"
    assert groups[0]["names"] == ["_orig_mod.gru.bias_ih_l0"]


def test_bad_lr_max_is_a_clear_error():
    cfg = _cfg()
    cfg["lr_max"] = 0.0
    with pytest.raises(ValueError, match="lr_max must be > 0"):
        schedule.make_scheduler(schedule.make_optimizer(_Tiny(), cfg, "cpu"), cfg)
