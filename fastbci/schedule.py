"""Optimiser and learning-rate schedule of the official recipe (docs/recipe.md section 5).

* :func:`param_groups` splits a model's parameters into the three official AdamW groups, in the
  official order: ``bias`` (names containing ``gru.bias`` or ``out.bias``, weight decay 0),
  ``day_layer`` (names containing ``day_``, ``lr_max_day`` and ``weight_decay_day``) and
  ``other`` (everything else, the optimiser's default ``weight_decay``). Without day parameters
  there are two groups, as in the official trainer.
* :func:`lr_multiplier` is the per-group multiplier of the official ``cosine`` schedule:
  linear warm-up ``s / warmup`` for ``s < warmup``, then
  ``max(r, r + (1 - r) * 0.5 * (1 + cos(pi * p)))`` with ``p = (s - warmup) / (decay - warmup)``
  and ``r = lr_min / lr_max`` until ``decay`` steps, then flat at ``r``.
  :func:`linear_multiplier` is the official ``linear`` type (``torch.optim.lr_scheduler.LinearLR``
  from factor 1 to ``lr_min / lr_max`` over ``lr_decay_steps``, no warm-up, the same ratio for
  every group), written in closed form.
* :func:`make_optimizer` / :func:`make_scheduler` build the AdamW optimiser (fused on CUDA) and
  a ``LambdaLR`` with one lambda per group, whose state dict is the official one.

The scheduler is stepped once after every optimiser step, so training batch ``k`` (0-based) runs
with multiplier ``lr_multiplier(k, ...)``: batch 0 has learning rate 0 during warm-up, as official.
"""
from __future__ import annotations

import functools
import math
from typing import Iterable, Mapping

import torch
from torch.optim.lr_scheduler import LambdaLR

GROUP_NAMES = ("bias", "day_layer", "other")


def is_bias_name(name: str) -> bool:
    """Official rule for the no-decay bias group."""
    return "gru.bias" in name or "out.bias" in name


def is_day_name(name: str) -> bool:
    """Official rule for the day-layer group."""
    return "day_" in name


def param_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
                 cfg: Mapping) -> list[dict]:
    """The official AdamW parameter groups for ``model.named_parameters()``.

    Returns dicts with ``params``, ``names`` (for logging and tests), ``group_type`` and the
    per-group ``lr`` / ``weight_decay`` overrides (as official: the bias group only overrides the
    weight decay, the day group overrides both, the other group uses the optimiser defaults).
    Parameters with ``requires_grad=False`` are kept (the official trainer also passes them).
    Prefixes such as ``_orig_mod.`` (torch.compile) do not change the grouping.
    """
    bias, day, other = [], [], []
    bias_n, day_n, other_n = [], [], []
    for name, p in named_parameters:
        if is_bias_name(name):
            bias.append(p)
            bias_n.append(name)
        # the official trainer puts a name into the day group even if it is also a bias name;
        # no official parameter is both, but keep the official membership rule exactly.
        if is_day_name(name):
            day.append(p)
            day_n.append(name)
        if not is_day_name(name) and not is_bias_name(name):
            other.append(p)
            other_n.append(name)
    groups = [{"params": bias, "names": bias_n, "weight_decay": 0.0, "group_type": "bias"}]
    if day:
        groups.append({"params": day, "names": day_n, "lr": float(cfg["lr_max_day"]),
                       "weight_decay": float(cfg["weight_decay_day"]), "group_type": "day_layer"})
    groups.append({"params": other, "names": other_n, "group_type": "other"})
    return groups


def make_optimizer(model: torch.nn.Module, cfg: Mapping, device: torch.device | str) -> torch.optim.AdamW:
    """AdamW with the official groups, betas, eps and weight decay; fused on CUDA."""
    device = torch.device(device)
    groups = param_groups(model.named_parameters(), cfg)
    for g in groups:
        g.pop("names")
    kwargs = {}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, lr=float(cfg["lr_max"]),
                             betas=(float(cfg["beta0"]), float(cfg["beta1"])),
                             eps=float(cfg["epsilon"]), weight_decay=float(cfg["weight_decay"]),
                             **kwargs)


def lr_multiplier(step: int, min_ratio: float, decay_steps: int, warmup_steps: int) -> float:
    """The official cosine schedule's multiplier of ``lr_max`` at scheduler step ``step``."""
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if step < decay_steps:
        progress = float(step - warmup_steps) / float(max(1, decay_steps - warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(min_ratio, min_ratio + (1.0 - min_ratio) * cosine)
    return min_ratio


def linear_multiplier(step: int, end_factor: float, total_iters: int) -> float:
    """The official ``linear`` type: ``LinearLR(start_factor=1, end_factor, total_iters)``."""
    if total_iters <= 0:
        return end_factor
    frac = min(step, total_iters) / total_iters
    return 1.0 + (end_factor - 1.0) * frac


def _ratio(lo: float, hi: float, what: str) -> float:
    if hi <= 0:
        raise ValueError(f"{what} must be > 0 for the learning-rate schedule, got {hi}")
    return float(lo) / float(hi)


def group_lambdas(cfg: Mapping, group_types: Iterable[str]) -> list:
    """One multiplier function per parameter group (in the optimiser's group order)."""
    kind = cfg["lr_scheduler_type"]
    out = []
    for gt in group_types:
        if kind == "cosine":
            if gt == "day_layer":
                ratio = _ratio(cfg["lr_min_day"], cfg["lr_max_day"], "lr_max_day")
                fn = functools.partial(_cosine, min_ratio=ratio,
                                       decay_steps=int(cfg["lr_decay_steps_day"]),
                                       warmup_steps=int(cfg["lr_warmup_steps_day"]))
            else:
                fn = functools.partial(_cosine, min_ratio=_ratio(cfg["lr_min"], cfg["lr_max"], "lr_max"),
                                       decay_steps=int(cfg["lr_decay_steps"]),
                                       warmup_steps=int(cfg["lr_warmup_steps"]))
        elif kind == "linear":
            fn = functools.partial(_linear, end_factor=_ratio(cfg["lr_min"], cfg["lr_max"], "lr_max"),
                                   total_iters=int(cfg["lr_decay_steps"]))
        else:
            raise ValueError(f"lr_scheduler_type must be 'cosine' or 'linear', got {kind!r}")
        out.append(fn)
    return out


# module-level functions (not lambdas) so that the LambdaLR can be pickled if a user wants to
def _cosine(step, *, min_ratio, decay_steps, warmup_steps):
    return lr_multiplier(step, min_ratio, decay_steps, warmup_steps)


def _linear(step, *, end_factor, total_iters):
    return linear_multiplier(step, end_factor, total_iters)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping) -> LambdaLR:
    """``LambdaLR`` with one official multiplier per group (group order of ``optimizer``)."""
    types = [g.get("group_type", "other") for g in optimizer.param_groups]
    return LambdaLR(optimizer, group_lambdas(cfg, types))
