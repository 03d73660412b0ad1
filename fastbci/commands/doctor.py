"""``fastbci doctor CONFIG [key=value ...]``: what a configuration changes from the official recipe
and the risks of each change; ``fastbci doctor --env``: does this torch compile the official
model's gradients right (the library: :mod:`fastbci.doctor`, :mod:`fastbci.envcheck`)."""
from __future__ import annotations

import argparse

from fastbci.commands.options import add_json, report

HELP = "what a configuration changes from the official recipe, and the risks (--env: this torch)"
DESCRIPTION = ("Compare a configuration with the official Brain-to-Text '25 baseline recipe and "
               "report the known risks of every difference (severe, warning, info). --env checks "
               "this torch instead: compile the official model's patching and compare its "
               "gradients with eager ones.")
EPILOG = ("Exit status: 1 a severe risk is found (--env: this torch compiles the gradients "
          "wrongly), 0 otherwise, 2 a configuration error.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", metavar="CONFIG", help="YAML configuration file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. lr_max=0.002")
    p.add_argument("--keys", action="store_true", help="list every known key with its default and exit")
    p.add_argument("--env", action="store_true",
                   help="check this torch instead of a configuration: exit 1 if torch.compile "
                        "computes the official model's day-layer gradients wrongly, 0 if not")
    p.add_argument("--backend", default="inductor",
                   help="with --env: the torch.compile backend (default inductor, what "
                        "torch.compile uses; aot_eager checks AOTAutograd alone, faster)")
    add_json(p)


def _keys(a: argparse.Namespace) -> int:
    from fastbci.config import defaults, get, known_keys, official
    from fastbci.doctor import fmt_value
    off, dflt = official(), defaults()
    rows = [(key, "fastbci default" if key.startswith("fastbci.") else "official",
             get(dflt if key.startswith("fastbci.") else off, key)) for key in known_keys()]
    report(a, [f"{k}  ({w}: {fmt_value(v, 60)})" for k, w, v in rows],
           [{"key": k, "where": w, "value": v} for k, w, v in rows])
    return 0


def _env(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from fastbci import envcheck
    from fastbci.errors import EXIT_OK, EXIT_SEVERE
    result = envcheck.probe(backend=a.backend)
    report(a, "fastbci doctor --env: " + envcheck.report(result), asdict(result))
    return EXIT_SEVERE if result.affected else EXIT_OK


def run(a: argparse.Namespace) -> int:
    from fastbci.config import ConfigError, load_config
    from fastbci.doctor import SEVERE, assess, format_findings
    from fastbci.errors import EXIT_OK, EXIT_SEVERE
    if a.env:
        return _env(a)
    if a.keys:
        return _keys(a)
    if a.config is None:
        raise ConfigError("give a CONFIG file (or --keys, or --env)")
    findings = assess(load_config(a.config, a.overrides))
    head = f"fastbci doctor: {a.config}" + (f" with {' '.join(a.overrides)}" if a.overrides else "")
    report(a, [head, format_findings(findings)],
           [{"key": f.key, "value": f.value, "official": f.official, "severity": f.severity,
             "impact": f.impact} for f in findings])
    return EXIT_SEVERE if any(f.severity == SEVERE for f in findings) else EXIT_OK
