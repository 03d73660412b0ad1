"""What an ablation runs: the factors (the keys where a configuration and its reference differ,
alone or in named groups) and the variants (the configuration, the reference, and each factor
set back or carried over), each over its seeds, as checked configurations."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from fastbci import config as config_mod
from fastbci import doctor
from fastbci.errors import ConfigError

#: groups known by name (``--group augmentation``): the collapse diagnosis's augmentation
KNOWN_GROUPS: dict[str, tuple[str, ...]] = {
    "augmentation": ("dataset.data_transforms.white_noise_std",
                     "dataset.data_transforms.constant_offset_std"),
}
DIRECTIONS = ("fix", "break", "both")
#: keys every run of a sweep sets itself
SEED_KEYS = ("seed", "dataset.seed")


@dataclasses.dataclass(frozen=True)
class Factor:
    """One thing an ablation varies: ``keys`` (one, or a group), CONFIG's and REF's values."""
    name: str
    keys: tuple[str, ...]
    config_values: tuple[Any, ...]
    ref_values: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Variant:
    """A configuration of the ablation: ``carried`` names the factors at CONFIG's value (the
    others are at REF's). ``factor``/``direction`` say what it tests (empty for config and ref)."""
    name: str
    factor: str
    direction: str
    carried: frozenset[str]


def set_value(cfg: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` of a nested configuration in place."""
    node = cfg
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = copy.deepcopy(value)


def with_values(cfg: Mapping, values: Mapping[str, Any], overrides: Iterable[str] = ()) -> dict:
    """A checked configuration: ``cfg`` with ``values`` (dotted keys) set, then ``overrides``
    (``key=value`` texts), validated as any configuration file is."""
    out = copy.deepcopy(dict(cfg))
    for k, v in values.items():
        set_value(out, k, v)
    return config_mod.from_mapping(out, list(overrides))


def _severity(cfg: Mapping, ref: Mapping) -> dict[str, str]:
    """The most severe doctor finding per key over both configurations."""
    rank = {doctor.SEVERE: 0, doctor.WARNING: 1, doctor.INFO: 2}
    out: dict[str, str] = {}
    for c in (cfg, ref):
        for f in doctor.assess(c):
            if f.key not in out or rank[f.severity] < rank[out[f.key]]:
                out[f.key] = f.severity
    return out


def differing_keys(cfg: Mapping, ref: Mapping) -> dict[str, bool]:
    """``{key: is_factor}`` of every key where the two configurations differ; a key is a factor
    unless it is fastbci's own setting (other than the :data:`fastbci.config.RECIPE_EXTRAS`,
    which change what is learned) or bookkeeping (the doctor's ``info``: paths, logging, seeds,
    validation cadence)."""
    a, b = config_mod.flatten(cfg), config_mod.flatten(ref)
    sev = _severity(cfg, ref)
    out = {}
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            own = k.startswith("fastbci.") and k not in config_mod.RECIPE_EXTRAS
            out[k] = not own and sev.get(k, doctor.INFO) != doctor.INFO
    return out


def parse_groups(specs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``["aug=k1,k2", "augmentation"]`` -> ``{name: keys}`` (a bare name is a known group)."""
    out: dict[str, tuple[str, ...]] = {}
    known = set(config_mod.known_keys())
    for spec in specs:
        name, sep, keys = spec.partition("=")
        name = name.strip()
        if not sep:
            if name not in KNOWN_GROUPS:
                raise ConfigError(f"--group {spec}: give NAME=key1,key2 (known groups by name: "
                                  f"{', '.join(KNOWN_GROUPS)})")
            out[name] = KNOWN_GROUPS[name]
            continue
        ks = tuple(k.strip() for k in keys.split(",") if k.strip())
        if not name or not ks:
            raise ConfigError(f"--group {spec}: give NAME=key1,key2")
        for k in ks:
            if k not in known:
                raise config_mod.unknown_key_error(k, f"--group {spec}")
        out[name] = ks
    seen: dict[str, str] = {}
    for name, ks in out.items():
        for k in ks:
            if k in seen:
                raise ConfigError(f"key {k} is in two groups ({seen[k]} and {name})")
            seen[k] = name
    return out


def factors(cfg: Mapping, ref: Mapping, groups: Mapping[str, Sequence[str]] | None = None,
            keys: Sequence[str] | None = None) -> list[Factor]:
    """The factors of an ablation of ``cfg`` against ``ref``: every differing key that is a
    factor (:func:`differing_keys`), the keys of a group as one; ``keys`` (keys or group names)
    keeps only those. A group or key that does not differ is an error."""
    diff = differing_keys(cfg, ref)
    a, b = config_mod.flatten(cfg), config_mod.flatten(ref)
    grouped: dict[str, str] = {}
    out: list[Factor] = []
    for name, gkeys in (groups or {}).items():
        present = [k for k in gkeys if k in diff]
        if not present:
            raise ConfigError(f"group {name}: none of its keys ({', '.join(gkeys)}) differs "
                              "between CONFIG and REF")
        grouped.update({k: name for k in present})
        out.append(Factor(name, tuple(present), tuple(a.get(k) for k in present),
                          tuple(b.get(k) for k in present)))
    for k, is_factor in diff.items():
        if is_factor and k not in grouped:
            out.append(Factor(k, (k,), (a.get(k),), (b.get(k),)))
    if keys:
        names = {f.name for f in out} | set(grouped)
        for k in keys:
            if k not in names:
                why = ("it is bookkeeping, not a factor" if diff.get(k) is False
                       else "it does not differ between CONFIG and REF")
                raise ConfigError(f"--keys {k}: {why}; the factors are: "
                                  f"{', '.join(f.name for f in out) or 'none'}")
        wanted = {grouped.get(k, k) for k in keys}
        out = [f for f in out if f.name in wanted]
    if not out:
        shown = ", ".join(diff) or "no key at all"
        raise ConfigError(f"nothing to ablate: CONFIG and REF differ in no factor (they differ "
                          f"in: {shown}; paths, logging, seeds and fastbci's own settings are "
                          "not factors)")
    return out


def variants(facs: Sequence[Factor], direction: str = "both") -> list[Variant]:
    """``config``, ``ref``, then ``fix-F`` (CONFIG with F at REF's value) and ``break-F`` (REF
    with F at CONFIG's value) for each factor; a variant equal to one before it (with one
    factor, fix-F is ref and break-F is config) is not repeated."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"--direction {direction}: one of {', '.join(DIRECTIONS)}")
    everything = frozenset(f.name for f in facs)
    out = [Variant("config", "", "", everything), Variant("ref", "", "", frozenset())]
    if direction in ("fix", "both"):
        out += [Variant(f"fix-{f.name}", f.name, "fix", everything - {f.name}) for f in facs]
    if direction in ("break", "both"):
        out += [Variant(f"break-{f.name}", f.name, "break", frozenset({f.name})) for f in facs]
    seen: set[frozenset] = set()
    unique = []
    for v in out:
        if v.carried not in seen:
            seen.add(v.carried)
            unique.append(v)
    return unique


def find(vs: Sequence[Variant], carried: frozenset[str]) -> Variant | None:
    """The variant with exactly these factors at CONFIG's value."""
    return next((v for v in vs if v.carried == carried), None)


def variant_values(v: Variant, facs: Sequence[Factor]) -> dict[str, Any]:
    """``{key: value}`` of every factor key in variant ``v``."""
    out = {}
    for f in facs:
        vals = f.config_values if f.name in v.carried else f.ref_values
        out.update(zip(f.keys, vals))
    return out


def run_config(base: Mapping, values: Mapping[str, Any], folder: Path, seed: int | None,
               overrides: Sequence[str] = ()) -> dict:
    """A run's configuration: ``base`` (CONFIG with the user's overrides) with ``values``, the
    seeds (``seed`` and ``dataset.seed``; None: CONFIG's), and the run folder; the collapse
    watch on, no progress bar."""
    vals = dict(values)
    if seed is not None:
        vals.update({k: seed for k in SEED_KEYS})
    vals.update({"output_dir": str(folder), "checkpoint_dir": str(folder / "checkpoint"),
                 "fastbci.collapse_watch": True, "fastbci.progress": False,
                 "fastbci.resume": False, "fastbci.overwrite": False})
    return with_values(base, vals, overrides)


def seed_list(seeds: int | None = None, listed: Sequence[int] | None = None) -> list[int]:
    """``1..seeds``, or the listed seeds (distinct, in order)."""
    if listed:
        out = list(dict.fromkeys(int(s) for s in listed))
    else:
        out = list(range(1, int(seeds or 1) + 1))
    if not out or any(s < 0 for s in out):
        raise ConfigError(f"seeds must be non-negative integers, got {out}")
    return out


def signature(obj: Any) -> str:
    """A short stable hash of a JSON-able object (what a sweep folder was made for)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
