"""A search space: a YAML file mapping dotted configuration keys to a distribution,

    lr_max: {low: 1.0e-4, high: 3.0e-2, log: true}      # a float (log: sampled on a log scale)
    model.n_units: {low: 64, high: 512, int: true}      # an integer
    lr_scheduler_type: {choices: [cosine, linear]}       # one of a list

checked key by key and bound by bound against the configuration's schema and range table
(:mod:`fastbci.ranges`, the checks of :func:`fastbci.config.validate`) before any run starts."""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

from fastbci import config as config_mod
from fastbci import ranges
from fastbci.errors import ConfigError
from fastbci.sweep import plan

_FIELDS = {"low", "high", "log", "int", "choices", "step"}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _one(key: str, spec: Any, where: str) -> dict:
    """The normal form of one key's distribution (``{"choices": [...]}``, or ``low``/``high``
    with ``int``/``log``), its fields checked."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: {key}: give {{low, high, log}} (a float), {{low, high, "
                          f"int: true}} or {{choices: [...]}}, not {spec!r}")
    extra = set(spec) - _FIELDS
    if extra:
        raise ConfigError(f"{where}: {key}: unknown field(s) {', '.join(sorted(map(str, extra)))} "
                          f"(allowed: {', '.join(sorted(_FIELDS))})")
    if "choices" in spec:
        ch = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(ch, list) or not ch:
            raise ConfigError(f"{where}: {key}: choices is a non-empty list, alone")
        return {"choices": list(ch)}
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {key}: give both low and high (or choices)")
    lo, hi, is_int, log = spec["low"], spec["high"], bool(spec.get("int")), bool(spec.get("log"))
    if not (_is_number(lo) and _is_number(hi)):
        raise ConfigError(f"{where}: {key}: low and high are numbers, got {lo!r} and {hi!r}")
    if is_int and not (float(lo).is_integer() and float(hi).is_integer()):
        raise ConfigError(f"{where}: {key}: int: true needs integer bounds, got {lo} and {hi}")
    if not lo < hi:
        raise ConfigError(f"{where}: {key}: low ({lo}) must be below high ({hi})")
    if log and lo <= 0:
        raise ConfigError(f"{where}: {key}: log: true needs low > 0, got {lo}")
    out = {"low": int(lo) if is_int else float(lo), "high": int(hi) if is_int else float(hi),
           "int": is_int, "log": log}
    return out


def _check_value(cfg: Mapping, key: str, value: Any, where: str) -> None:
    rng = ranges.RANGES.get(key)
    if rng is not None and _is_number(value) and not rng.each and not rng.contains(value):
        raise ConfigError(f"{where}: {key}: {value!r} is out of range (allowed: {rng.allowed()}; "
                          f"{rng.meaning})")
    try:
        plan.with_values(cfg, {key: value})
    except ConfigError as e:
        raise ConfigError(f"{where}: {key} = {value!r}: {e}") from None


def check(space: Any, cfg: Mapping, where: str = "the search space") -> dict[str, dict]:
    """The space in normal form, every key known and every bound (and choice) a valid value of
    its key in ``cfg`` (its range, its type, the rules over several keys), or a ConfigError."""
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"{where} must map configuration keys to distributions, e.g. "
                          "lr_max: {low: 1.0e-4, high: 3.0e-2, log: true}")
    known = set(config_mod.known_keys())
    out: dict[str, dict] = {}
    for key, spec in space.items():
        key = str(key)
        if key not in known:
            raise config_mod.unknown_key_error(key, where)
        if key in ("output_dir", "checkpoint_dir") or key.startswith("fastbci."):
            raise ConfigError(f"{where}: {key} is a run setting, not a hyperparameter")
        d = _one(key, spec, where)
        for v in d.get("choices", [d.get("low"), d.get("high")]):
            _check_value(cfg, key, v, where)
        if "low" in d and not isinstance(config_mod.get(cfg, key), (int, float)):
            raise ConfigError(f"{where}: {key} is not a number: give choices")
        out[key] = d
    return out


def load(path: str | os.PathLike, cfg: Mapping) -> dict[str, dict]:
    """The checked space of a YAML file."""
    return check(config_mod.read_yaml(path, "search space"), cfg, f"search space {path}")


def sample(trial, space: Mapping[str, dict]) -> dict[str, Any]:
    """An Optuna trial's values for the space (``{key: value}``)."""
    out = {}
    for key, d in space.items():
        if "choices" in d:
            out[key] = trial.suggest_categorical(key, d["choices"])
        elif d["int"]:
            out[key] = trial.suggest_int(key, d["low"], d["high"], log=d["log"])
        else:
            out[key] = trial.suggest_float(key, d["low"], d["high"], log=d["log"])
    return out


def check_values(values: Mapping[str, Any], space: Mapping[str, dict]) -> dict[str, Any]:
    """Values to try (``--enqueue``): keys of the space, each inside its distribution."""
    if not isinstance(values, Mapping) or not values:
        raise ConfigError(f"values to try must map keys of the space to values, got {values!r}")
    for key, v in values.items():
        d = space.get(key)
        if d is None:
            raise ConfigError(f"--enqueue {key}: not a key of the search space "
                              f"({', '.join(space)})")
        inside = (v in d["choices"]) if "choices" in d else (
            _is_number(v) and d["low"] <= v <= d["high"] and (not d["int"] or float(v).is_integer()))
        if not inside:
            where = (f"one of {d['choices']}" if "choices" in d
                     else f"{d['low']} to {d['high']}{' (integers)' if d['int'] else ''}")
            raise ConfigError(f"--enqueue {key}={v!r}: outside the search space ({where})")
    return dict(values)
