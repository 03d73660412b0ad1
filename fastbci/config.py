"""Configuration: the official recipe's keys and values, fastbci's additions, overrides, checks.

A configuration is a plain nested ``dict`` (as the official trainer's ``args``), built as

    built-in defaults (configs/official.yaml)  <-  the user's YAML file  <-  ``key=value`` overrides

Every key of a user file or override must be a known key: an unknown one is an error naming the
key and the nearest valid one. Values are type-checked against a schema derived from the
official configuration, so ``dataset.batch_size=forty`` or ``lr_max=[1]`` fail with a message
naming the key, the value and the expected type.
"""
from __future__ import annotations

import copy
import difflib
import math
import functools
import os
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from fastbci.errors import ConfigError

__all__ = ["ConfigError", "load_config", "from_mapping", "defaults", "official", "merge", "validate",
           "read_yaml", "dump", "flatten", "get", "known_keys", "diff_from_official", "parse_override"]


# ---------------------------------------------------------------------------------------------
# defaults
# ---------------------------------------------------------------------------------------------
def _official_path() -> Path:
    try:
        p = resources.files("fastbci.configs") / "official.yaml"
        if p.is_file():
            return Path(str(p))
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    p = Path(__file__).resolve().parent.parent / "configs" / "official.yaml"
    if p.is_file():
        return p
    raise ConfigError("fastbci's built-in configs/official.yaml is missing from the installation")


_DEFAULTS: dict | None = None


def defaults() -> dict:
    """A fresh copy of the built-in defaults: the official values plus fastbci's section."""
    global _DEFAULTS
    if _DEFAULTS is None:
        with open(_official_path()) as f:
            _DEFAULTS = yaml.safe_load(f)
    return copy.deepcopy(_DEFAULTS)


def official() -> dict:
    """The official configuration alone (without the ``fastbci`` section)."""
    d = defaults()
    d.pop("fastbci", None)
    return d


# ---------------------------------------------------------------------------------------------
# schema
# ---------------------------------------------------------------------------------------------
# Type specs: "bool", "int", "number" (int or float, stored as float), "str", "path-or-none",
# ("list", item), ("optional", spec), ("choice", (a, b, ...)), "any-dict-or-none", "bool-or-str".
_NUMBER_KEYS = {
    "model.rnn_dropout", "model.input_network.input_layer_dropout",
    "lr_max", "lr_min", "lr_max_day", "lr_min_day", "beta0", "beta1", "epsilon", "weight_decay",
    "weight_decay_day", "grad_norm_clip_value",
    "dataset.data_transforms.white_noise_std", "dataset.data_transforms.constant_offset_std",
    "dataset.data_transforms.random_walk_std", "dataset.data_transforms.static_gain_std",
    "dataset.data_transforms.smooth_kernel_std", "dataset.test_percentage",
    "fastbci.collapse_blank_fraction",
}
_SPECIAL: dict[str, Any] = {
    "gpu_number": ("str-or-int",),
    "mode": ("choice", ("train", "eval")),
    "init_checkpoint_path": "path-or-none",
    "lr_scheduler_type": ("choice", ("cosine", "linear")),
    "model.input_network.input_layer_sizes": ("list", "int"),
    "dataset.must_include_days": ("optional", ("list", "int")),
    "dataset.feature_subset": ("optional", ("list", "int")),
    "dataset.bad_trials_dict": "any-dict-or-none",
    "dataset.sessions": ("list", "str"),
    "dataset.dataset_probability_val": ("list", "number"),
    "fastbci.impl": ("choice", ("auto", "fused", "reference")),
    "fastbci.rng": ("choice", ("philox", "torch")),
    "fastbci.device": "str",
    "fastbci.store_device": ("choice", ("auto", "cpu", "cuda")),
    "fastbci.bad_trial_policy": ("choice", ("fail", "skip")),
    "fastbci.nonfinite_policy": ("choice", ("stop", "skip")),
    "fastbci.resume": "bool-or-str",
}


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` of a nested configuration (``dataset.bad_trials_dict`` stays whole)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key not in ("dataset.bad_trials_dict",):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@functools.lru_cache(maxsize=None)
def _schema_cached() -> dict[str, Any]:
    schema = {}
    for key, value in flatten(defaults()).items():
        if key in _SPECIAL:
            schema[key] = _SPECIAL[key]
        elif key in _NUMBER_KEYS:
            schema[key] = "number"
        elif isinstance(value, bool):
            schema[key] = "bool"
        elif isinstance(value, int):
            schema[key] = "int"
        elif isinstance(value, float):
            schema[key] = "number"
        elif isinstance(value, str):
            schema[key] = "str"
        else:
            raise AssertionError(f"no schema for default key {key}")
    return schema


def _schema() -> dict[str, Any]:
    """{dotted key: type spec} of every known key (computed once; callers must not mutate it)."""
    return _schema_cached()


def known_keys() -> list[str]:
    return sorted(_schema())


def _describe(spec) -> str:
    if isinstance(spec, str):
        return {"number": "a number", "int": "an integer", "bool": "true or false", "str": "a string",
                "path-or-none": "a path or None", "any-dict-or-none": "a mapping or null",
                "bool-or-str": "true, false or a path"}[spec]
    kind = spec[0]
    if kind == "list":
        return f"a list of {_describe(spec[1]).split(' ', 1)[1]}s"
    if kind == "optional":
        return f"{_describe(spec[1])} or null"
    if kind == "choice":
        return "one of " + ", ".join(repr(c) for c in spec[1])
    if kind == "str-or-int":
        return "a GPU number (string or integer)"
    raise AssertionError(spec)


def _check(key: str, value: Any, spec) -> Any:
    def bad():
        return ConfigError(f"config key '{key}': {value!r} is not {_describe(spec)}")

    if isinstance(spec, str):
        if spec == "bool":
            if not isinstance(value, bool):
                raise bad()
            return value
        if spec == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad()
            return value
        if spec == "number":
            if isinstance(value, str):
                # PyYAML (YAML 1.1) reads "2e-3" (no dot) as a string: accept what float() reads
                try:
                    value = float(value)
                except ValueError:
                    raise bad() from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad()
            return float(value) if isinstance(value, float) else value
        if spec == "str":
            if not isinstance(value, str):
                raise bad()
            return value
        if spec == "path-or-none":
            if value is None or isinstance(value, str):
                return value
            raise bad()
        if spec == "any-dict-or-none":
            if value is None or isinstance(value, Mapping):
                return value
            raise bad()
        if spec == "bool-or-str":
            if isinstance(value, (bool, str)):
                return value
            raise bad()
    kind = spec[0]
    if kind == "list":
        if not isinstance(value, (list, tuple)):
            raise bad()
        return [_check(f"{key}[{i}]", v, spec[1]) for i, v in enumerate(value)]
    if kind == "optional":
        return None if value is None else _check(key, value, spec[1])
    if kind == "choice":
        if value not in spec[1]:
            raise bad()
        return value
    if kind == "str-or-int":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise bad()
        return value
    raise AssertionError(spec)


def _nearest(key: str, keys: Iterable[str]) -> str | None:
    keys = list(keys)
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if match:
        return match[0]
    leaf = key.rsplit(".", 1)[-1]
    leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
    match = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
    return leaves[match[0]] if match else None


def unknown_key_error(key: str, where: str) -> ConfigError:
    near = _nearest(key, known_keys())
    hint = f"; did you mean '{near}'?" if near else "; run `python -m fastbci.doctor --keys` for the list"
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


# ---------------------------------------------------------------------------------------------
# merge, overrides, load
# ---------------------------------------------------------------------------------------------
def _set(cfg: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = cfg
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _get(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for p in dotted.split("."):
        node = node[p]
    return node


def get(cfg: Mapping, dotted: str, default: Any = None) -> Any:
    """``get(cfg, "dataset.data_transforms.random_cut")``, or ``default`` when absent."""
    try:
        return _get(cfg, dotted)
    except (KeyError, TypeError):
        return default


def merge(base: dict, update: Mapping, where: str = "the configuration") -> dict:
    """Merge ``update`` into a copy of ``base``, checking every key and value."""
    schema = _schema()
    out = copy.deepcopy(base)
    for key, value in flatten(update).items():
        if key not in schema:
            # a whole sub-mapping given as null/empty (e.g. `fastbci:` with nothing below)
            if value is None and any(k.startswith(key + ".") for k in schema):
                continue
            raise unknown_key_error(key, where)
        _set(out, key, _check(key, value, schema[key]))
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"dataset.batch_size=48"`` -> ``("dataset.batch_size", 48)`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value "
                          "(e.g. dataset.batch_size=48)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({e})") from None
    return key, value


def validate(cfg: dict) -> dict:
    """Cross-key checks that a single value's type cannot express."""
    ds = cfg["dataset"]
    n_days = len(ds["sessions"])
    if n_days == 0:
        raise ConfigError("dataset.sessions is empty: name at least one session folder")
    if len(ds["dataset_probability_val"]) != n_days:
        raise ConfigError(
            f"dataset.dataset_probability_val has {len(ds['dataset_probability_val'])} entries but "
            f"dataset.sessions has {n_days}: give one 0/1 per session")
    if ds["batch_size"] <= 0:
        raise ConfigError(f"dataset.batch_size must be positive, got {ds['batch_size']}")
    if not 1 <= ds["days_per_batch"] <= n_days:
        raise ConfigError(f"dataset.days_per_batch must be in [1, {n_days}] (the number of sessions), "
                          f"got {ds['days_per_batch']}")
    for d in ds["must_include_days"] or []:
        if not -n_days <= d < n_days:  # negative: counted from the end, as officially
            raise ConfigError(f"dataset.must_include_days: day {d} is not a session index "
                              f"({-n_days}..{n_days - 1}; negative counts from the end)")
    if len(ds["must_include_days"] or []) > ds["days_per_batch"]:
        raise ConfigError("dataset.must_include_days names more days than dataset.days_per_batch")
    m = cfg["model"]
    if m["patch_size"] < 0 or m["patch_stride"] < 0 or (m["patch_size"] > 0 and m["patch_stride"] == 0):
        raise ConfigError("model.patch_size / model.patch_stride must be >= 0, and the stride > 0 "
                          "when patching is on")
    if m["n_input_features"] != ds["neural_dim"]:
        raise ConfigError(f"model.n_input_features ({m['n_input_features']}) differs from "
                          f"dataset.neural_dim ({ds['neural_dim']})")
    t = ds["data_transforms"]
    for k in ("white_noise_std", "constant_offset_std", "random_walk_std", "static_gain_std",
              "smooth_kernel_std"):
        if t[k] < 0:
            raise ConfigError(f"dataset.data_transforms.{k} must be >= 0, got {t[k]}")
    if t["random_cut"] < 0:
        raise ConfigError(f"dataset.data_transforms.random_cut must be >= 0, got {t['random_cut']}")
    if t["smooth_data"] and t["smooth_kernel_size"] < 1:
        raise ConfigError("dataset.data_transforms.smooth_kernel_size must be >= 1")
    if cfg["num_training_batches"] < 1:
        raise ConfigError("num_training_batches must be >= 1")
    for k in ("model.rnn_dropout", "model.input_network.input_layer_dropout"):
        if not 0.0 <= _get(cfg, k) < 1.0:
            raise ConfigError(f"{k} must be in [0, 1), got {_get(cfg, k)}")
    _check_optimiser(cfg)
    return cfg


#: optimiser keys and the ranges AdamW and the schedule accept: (low, high, high included)
_RANGES = {
    "lr_max": (0.0, math.inf, False), "lr_min": (0.0, math.inf, False),
    "lr_max_day": (0.0, math.inf, False), "lr_min_day": (0.0, math.inf, False),
    "beta0": (0.0, 1.0, False), "beta1": (0.0, 1.0, False),
    "epsilon": (0.0, math.inf, False), "weight_decay": (0.0, math.inf, False),
    "weight_decay_day": (0.0, math.inf, False), "grad_norm_clip_value": (0.0, math.inf, False),
    "lr_warmup_steps": (0, math.inf, False), "lr_warmup_steps_day": (0, math.inf, False),
    "lr_decay_steps": (0, math.inf, False), "lr_decay_steps_day": (0, math.inf, False),
    "fastbci.collapse_blank_fraction": (0.0, 1.0, True),
}


def _check_optimiser(cfg: Mapping) -> None:
    """The values AdamW, the schedule or the watch would reject, named with their range."""
    for key, (lo, hi, hi_in) in _RANGES.items():
        v = _get(cfg, key)
        if not (lo <= v and (v <= hi if hi_in else v < hi)) or v != v:
            upper = "" if hi == math.inf else (f", {hi}]" if hi_in else f", {hi})")
            allowed = f">= {lo}" if not upper else f"in [{lo}{upper}"
            raise ConfigError(f"config key '{key}': {v!r} is out of range (must be {allowed})")
    for key in ("lr_max", "lr_max_day"):
        if cfg[key] <= 0:
            raise ConfigError(f"config key '{key}': {cfg[key]!r} is out of range (must be > 0: "
                              "the schedule scales from it)")
    if cfg["lr_min"] > cfg["lr_max"] or cfg["lr_min_day"] > cfg["lr_max_day"]:
        raise ConfigError(f"lr_min ({cfg['lr_min']}) / lr_min_day ({cfg['lr_min_day']}) must not "
                          f"exceed lr_max ({cfg['lr_max']}) / lr_max_day ({cfg['lr_max_day']})")


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """The content of a YAML file (None for an empty one), or a :class:`ConfigError` naming
    ``what``, the path and the problem: missing, a directory, unreadable, not UTF-8 text, not
    valid YAML."""
    from fastbci.fileio import path_problem
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise ConfigError(f"{what} {path} {problem}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be read: {os.strerror(e.errno) if e.errno else e}") \
            from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at line "
                          f"{line}, offset {e.start}): is it a YAML file? YAML is read as UTF-8; "
                          "save it with that encoding") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from None


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> dict:
    """Defaults <- YAML file <- ``key=value`` overrides, checked. ``path=None``: the defaults."""
    if path is None:
        return from_mapping({}, overrides)
    user = read_yaml(path)
    if user is None:
        user = {}
    if not isinstance(user, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(user).__name__}")
    return from_mapping(user, overrides, where=str(path))


def from_mapping(user: Mapping, overrides: Iterable[str] = (),
                 where: str = "the configuration") -> dict:
    """Defaults <- ``user`` (a configuration already in memory, e.g. the one a checkpoint
    carries) <- ``key=value`` overrides, checked exactly as :func:`load_config` checks a file
    (``where`` names the source in messages)."""
    cfg = merge(defaults(), user, where=where)
    schema = _schema()
    for text in overrides:
        key, value = parse_override(text)
        if key not in schema:
            raise unknown_key_error(key, f"override '{text}'")
        _set(cfg, key, _check(key, value, schema[key]))
    return validate(cfg)


def diff_from_official(cfg: Mapping) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (value, official value)}`` for every official key whose value differs."""
    off = flatten(official())
    cur = flatten(cfg)
    return {k: (cur.get(k), v) for k, v in off.items() if cur.get(k) != v}


def dump(cfg: Mapping, path: str | os.PathLike) -> None:
    """Write a configuration as YAML (the trainer saves ``args.yaml`` beside its checkpoints)."""
    from fastbci.fileio import atomic_write
    atomic_write(path, lambda f: yaml.safe_dump(dict(cfg), f, sort_keys=False,
                                                default_flow_style=None))
