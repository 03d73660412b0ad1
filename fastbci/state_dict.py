"""The official model's state dicts: its keys, the prefixes that wrappers add, and the check that
a state dict fits a model (every problem listed at once)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import torch

from fastbci.errors import CheckpointError

__all__ = ["strip_prefixes", "official_keys", "check_fit"]

_PREFIXES = ("_orig_mod.", "module.")


def strip_prefixes(state_dict: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """Remove the leading ``_orig_mod.`` (torch.compile) and ``module.`` (DataParallel /
    DistributedDataParallel) prefixes from every key, in any nesting order.

    Values are passed through unchanged (same objects) and the key order is kept. Two keys that
    become equal after stripping are an error (the checkpoint would be ambiguous).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"strip_prefixes expects a mapping of parameter names to tensors, "
                        f"got {type(state_dict).__name__}")
    out: "OrderedDict[str, Any]" = OrderedDict()
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state-dict keys must be strings, got {key!r}")
        new = key
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if new.startswith(p):
                    new = new[len(p):]
                    changed = True
        if new in out:
            raise CheckpointError(f"state-dict keys '{origin[new]}' and '{key}' both become "
                                  f"'{new}' once the '_orig_mod.'/'module.' prefixes are removed")
        out[new] = value
        origin[new] = key
    return out


def official_keys(n_days: int, n_layers: int) -> list[str]:
    """The official model's state-dict keys, in the official order."""
    keys = ["h0"]
    keys += [f"day_weights.{i}" for i in range(n_days)]
    keys += [f"day_biases.{i}" for i in range(n_days)]
    for k in range(n_layers):
        keys += [f"gru.weight_ih_l{k}", f"gru.weight_hh_l{k}", f"gru.bias_ih_l{k}",
                 f"gru.bias_hh_l{k}"]
    keys += ["out.weight", "out.bias"]
    return keys


def check_fit(model: torch.nn.Module, sd: Mapping[str, Any], strict: bool) -> None:
    """A :class:`CheckpointError` listing every key and shape of ``sd`` that does not fit
    ``model`` (missing and unexpected keys only when ``strict``)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = []
    for k, v in sd.items():
        if k in own:
            if not isinstance(v, torch.Tensor):
                shapes.append(f"{k}: not a tensor ({type(v).__name__})")
            elif tuple(v.shape) != tuple(own[k].shape):
                shapes.append(f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}")
    problems = []
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes))
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    if problems:
        raise CheckpointError(
            f"the state dict does not fit GRUDecoder(neural_dim={model.neural_dim}, "
            f"n_units={model.n_units}, n_days={model.n_days}, n_classes={model.n_classes}, "
            f"n_layers={model.n_layers}, patch_size={model.patch_size}):\n  "
            + "\n  ".join(problems))
