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
import functools
import os
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from fastbci import ranges
from fastbci.errors import ConfigError
from fastbci.yamlfile import DuplicateKeyError, UniqueKeyLoader

__all__ = ["ConfigError", "load_config", "from_mapping", "defaults", "official", "merge", "validate",
           "read_yaml", "dump", "flatten", "get", "known_keys", "diff_from_official", "parse_override"]


# ---------------------------------------------------------------------------------------------
# defaults
# ---------------------------------------------------------------------------------------------
def packaged(name: str) -> Path:
    """``configs/NAME`` as installed with fastbci (the repository's ``configs/`` folder is the
    package ``fastbci.configs``)."""
    try:
        p = resources.files("fastbci.configs") / name
        if p.is_file():
            return Path(str(p))
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    raise ConfigError(f"fastbci's built-in configs/{name} is missing from the installation")


def _official_path() -> Path:
    return packaged("official.yaml")


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
    "fastbci.init_blank_bias": ("optional", "number"),
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
    """The error for ``key``, which is not a configuration key: a section given a value (its
    keys listed), a key given a mapping, or an unknown key (the nearest known one)."""
    schema = _schema()
    inside = [k[len(key) + 1:] for k in schema if k.startswith(key + ".")]
    if inside:
        shown = ", ".join(inside[:12]) + (f", ... ({len(inside)} keys)" if len(inside) > 12 else "")
        return ConfigError(f"'{key}' in {where} is a section, not a key: give one of its keys, e.g. "
                           f"{key}.{inside[0]}=...; its keys: {shown}")
    parts = key.split(".")
    for head in (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)):
        if head in schema:
            return ConfigError(f"config key '{head}' in {where} takes a value, not a section of keys "
                               f"(got '{key}')")
    near = _nearest(key, known_keys())
    hint = f"; did you mean '{near}'?" if near else "; run `fastbci doctor --keys` for the list"
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
        value = yaml.load(raw, Loader=UniqueKeyLoader) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({e})") from None
    return key, value


def validate(cfg: dict) -> dict:
    """Every numeric key against its range, then the rules over several keys (both from
    :mod:`fastbci.ranges`, the one table docs/configuration.md shows); the first violation is
    a :class:`ConfigError` naming the key, the value and what is allowed."""
    schema = _schema()
    for key, rng in ranges.RANGES.items():
        value = _get(cfg, key)
        if rng.each:
            for i, v in enumerate(value or []):
                _check_range(f"{key}[{i}]", v, rng, schema[key])
        else:
            _check_range(key, value, rng, schema[key])
    for rule in ranges.RULES:
        message = rule.check(cfg)
        if message is not None:
            raise ConfigError(message)
    return cfg


def _is_int_spec(spec) -> bool:
    while isinstance(spec, tuple) and spec[0] in ("list", "optional"):
        spec = spec[1]
    return spec == "int"


def _check_range(key: str, value: Any, rng: "ranges.Range", spec) -> None:
    """``value`` of ``key`` inside ``rng`` (integers also within int64), or a ConfigError."""
    if (rng.lo, rng.hi, rng.values) == (None, None, None):
        return  # only a rule over several keys bounds it
    if value is None and isinstance(spec, tuple) and spec[0] == "optional":
        return  # null: the key's "not set" (its default behaviour)
    if rng.index:
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': {value!r} is not an integer index "
                              f"(allowed: {rng.allowed()}; {rng.meaning})") from None
    big = (rng.index or _is_int_spec(spec)) and not -ranges.INT64_MAX - 1 <= value <= ranges.INT64_MAX
    if big or not rng.contains(value):
        limit = (f"; integers are at most 2**63 - 1 = {ranges.INT64_MAX}"
                 if big and rng.hi is None else "")
        raise ConfigError(f"config key '{key}': {value!r} is out of range "
                          f"(allowed: {rng.allowed()}; {rng.meaning}{limit})")


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """The content of a YAML file (None for an empty one), or a :class:`ConfigError` naming
    ``what``, the path and the problem: missing, a directory, unreadable, not UTF-8 text, not
    valid YAML, a key given twice in one mapping (with both lines)."""
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
        return yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as e:
        raise ConfigError(f"{what} {path}: the key '{e.key}' is given twice, on line {e.lines[0]} and "
                          f"on line {e.lines[1]} (YAML would keep the last value without a word): "
                          "keep one") from None
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


# Keys of fastbci's section that change what a run learns, not only how it runs; each one's
# default is the official behaviour. The doctor reports them and an ablation takes them as
# factors, as it does the official keys.
RECIPE_EXTRAS = ("fastbci.init_blank_bias",)


def diff_from_official(cfg: Mapping) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (value, official value)}`` for every official key whose value differs,
    and every :data:`RECIPE_EXTRAS` key set to other than its default (the official behaviour)."""
    off = flatten(official())
    cur = flatten(cfg)
    out = {k: (cur.get(k), v) for k, v in off.items() if cur.get(k) != v}
    base = flatten(defaults())
    for k in RECIPE_EXTRAS:
        if cur.get(k, base[k]) != base[k]:
            out[k] = (cur.get(k), base[k])
    return out


def dump(cfg: Mapping, path: str | os.PathLike) -> None:
    """Write a configuration as YAML (the trainer saves ``args.yaml`` beside its checkpoints)."""
    from fastbci.fileio import atomic_write
    atomic_write(path, lambda f: yaml.safe_dump(dict(cfg), f, sort_keys=False,
                                                default_flow_style=None))
