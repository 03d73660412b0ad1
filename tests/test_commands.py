"""One ``fastbci`` command: every subcommand has --help, the console script and the ``python -m``
aliases run, the README and docs name only flags that exist, command modules only parse and
print, every numeric option has a range, the dependency pins are declared once."""
from __future__ import annotations

import argparse
import ast
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastbci import commands

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command and subcommand's parser: ``{("lm", "decode"): parser, ...}``."""
    out = {}

    def walk(path, p):
        out[path] = p
        for name, sp in _subparsers(p).items():
            walk(path + (name,), sp)
    walk((), commands.parser())
    return out


PARSERS = parsers()


def options_of(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions for o in a.option_strings}


def test_fastbci_help_lists_every_command_and_version(capsys):
    assert commands.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"    {name}" in out for name in commands.COMMANDS), out
    assert commands.main(["--version"]) == 0
    from fastbci import __version__
    assert capsys.readouterr().out.strip() == f"fastbci {__version__}"
    assert commands.main(["nope"]) == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(p for p in PARSERS if p), ids=" ".join)
def test_every_command_and_subcommand_has_help(path, capsys):
    assert commands.main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fastbci {' '.join(path)}"), out[:200]


@pytest.mark.slow
def test_the_console_script_and_every_python_m_alias_run():
    script = Path(sys.executable).with_name("fastbci")
    exe = [str(script)] if script.exists() else [shutil.which("fastbci") or "fastbci"]
    assert subprocess.run([*exe, "--help"], capture_output=True, timeout=120).returncode == 0
    for name in commands.COMMANDS:
        p = subprocess.run([sys.executable, "-m", f"fastbci.{name}", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and p.stdout.startswith(f"usage: fastbci {name}"), (name, p.stderr)


# ---------------------------------------------------------------------------------------------
# the docs name only flags that exist
# ---------------------------------------------------------------------------------------------
_CALL = re.compile(r"(?:\bfastbci |python -m fastbci\.|-m fastbci\.)(" + "|".join(commands.COMMANDS)
                   + r")\b([^`\n]*)")


def documented_calls(text: str) -> list[tuple[int, tuple[str, ...], list[str]]]:
    """``(line, command path, flags)`` of every fastbci command line in a markdown text
    (continuation lines ending with a backslash are joined)."""
    lines = text.replace("\\\n", " ").splitlines()
    found = []
    for i, line in enumerate(lines, 1):
        for m in _CALL.finditer(line):
            rest = m.group(2).split(" #")[0]
            words = rest.split()
            path = (m.group(1),)
            sub = _subparsers(PARSERS[path])
            if sub and words and words[0] in sub:
                path += (words[0],)
            flags = [w.split("=")[0].rstrip(",.;:)]") for w in words if w.startswith("--")]
            found.append((i, path, [f for f in flags if re.fullmatch(r"--[a-z][a-z0-9-]*", f)]))
    return found


def unknown_flags(text: str, where: str) -> list[str]:
    bad = []
    for line, path, flags in documented_calls(text):
        known = options_of(PARSERS[path])
        bad += [f"{where}:{line}: fastbci {' '.join(path)} has no {f}" for f in flags if f not in known]
    return bad


def test_the_readme_and_docs_name_only_flags_that_exist():
    bad = [b for doc in DOCS for b in unknown_flags(doc.read_text(), str(doc.relative_to(ROOT)))]
    assert not bad, "\n".join(bad)
    calls = [c for doc in DOCS for c in documented_calls(doc.read_text())]
    assert len(calls) > 40 and {c[1][0] for c in calls} >= set(commands.COMMANDS) - {"sweep"}


_OVERRIDE = re.compile(r"(?<![\w./-])((?:[a-z_]+\.)*[a-z_0-9]+)=(?![=\s])")


def unknown_keys(text: str, where: str) -> list[str]:
    """Configuration overrides (``section.key=value``) shown in a text whose key no configuration
    has (plain ``name=value`` words are too common in prose to judge)."""
    from fastbci.config import known_keys
    keys = set(known_keys())
    bad = []
    for i, line in enumerate(text.splitlines(), 1):
        found = {k for k in _OVERRIDE.findall(line)
                 if "." in k and k.split(".")[0] in ("model", "dataset", "fastbci")}
        bad += [f"{where}:{i}: no configuration key {k}" for k in sorted(found - keys)]
    return bad


def test_the_readme_and_docs_name_only_configuration_keys_that_exist():
    bad = [b for doc in DOCS for b in unknown_keys(doc.read_text(), str(doc.relative_to(ROOT)))]
    assert not bad, "\n".join(sorted(set(bad)))
    assert unknown_keys("train from it: `fastbci.init_from_checkpoint=DIR/ck`", "x.md") == \
        ["x.md:1: no configuration key fastbci.init_from_checkpoint"]


def test_the_flag_check_finds_a_planted_flag():
    text = ("run `fastbci evaluate --checkpoint X --lm-lexicon L`\n"
            "```\npython -m fastbci.lm decode --logits a.npz \\\n    --nbest-out f.csv\n```\n")
    assert unknown_flags(text, "x.md") == ["x.md:1: fastbci evaluate has no --lm-lexicon",
                                          "x.md:3: fastbci lm decode has no --nbest-out"]


def test_the_docs_show_the_fastbci_command():
    """``python -m fastbci.X`` appears only where a page says it is the same command."""
    alias = re.compile(r"python -m fastbci\.(" + "|".join(commands.COMMANDS) + r")\b")
    stale = [f"{doc.relative_to(ROOT)}:{i}" for doc in DOCS
             for i, line in enumerate(doc.read_text().splitlines(), 1)
             if alias.search(line) and "same" not in line and "alias" not in line]
    assert not stale, stale


# ---------------------------------------------------------------------------------------------
# commands parse and print; the libraries do the work
# ---------------------------------------------------------------------------------------------
_HEAVY = {"torch", "numpy", "h5py", "scipy", "triton", "transformers", "optuna"}


@pytest.mark.parametrize("path", sorted((ROOT / "fastbci" / "commands").glob("*.py")),
                         ids=lambda p: p.name)
def test_command_modules_hold_no_library_logic(path):
    """A command module imports no numerical library (anywhere in its source) and its ``run`` is
    the library call and the printing."""
    tree = ast.parse(path.read_text())
    heavy = sorted({(a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0]
                    for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                    for a in (n.names if isinstance(n, ast.Import) else [n])} & _HEAVY)
    assert not heavy, f"{path.name} imports {heavy}"
    runs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
    for n in runs:
        assert n.end_lineno - n.lineno < 40, f"{path.name}: run() has {n.end_lineno - n.lineno} lines"


def test_every_numeric_option_has_a_range():
    """A numeric option is parsed by fastbci.commands.options.integer / number (a range, the
    range table's words), never by a bare int or float."""
    bare = [f"fastbci {' '.join(path)} {a.option_strings[0]}" for path, p in PARSERS.items()
            for a in p._actions if a.type in (int, float) and a.option_strings]
    assert not bare, bare


@pytest.mark.parametrize("argv, words", [
    (["calibrate", "--checkpoint", "c", "--session", "s", "--out", "o", "--steps", str(10 ** 22)],
     "argument --steps: 10000000000000000000000 is out of range (allowed: 0 to 1000000; optimiser steps)"),
    (["lm", "tune", "--logits", "l", "--lm", "m", "--rounds", "-1"], "argument --rounds: -1 is out of range"),
    (["lm", "tune", "--logits", "l", "--lm", "m", "--max-trials", "0"], "--max-trials: 0 is out of range"),
    (["lm", "decode", "--logits", "l", "--lm", "m", "--workers", "0"], "--workers: 0 is out of range"),
    (["synth", "--out", "o", "--noise", "nan"], "--noise: nan is not a finite number"),
    (["synth", "--out", "o", "--signal", "inf"], "--signal: inf is not a finite number"),
    (["synth", "--out", "o", "--seed", "-1"], "--seed: -1 is out of range (allowed: 0 to 4294967295"),
    (["evaluate", "--checkpoint", "c", "--eval-batch-size", "x"], "'x' is not an integer"),
    (["lm", "tune", "--logits", "l", "--lm", "m", "--lm-weight", "1"], "unrecognized arguments: --lm-weight"),
])
def test_out_of_range_options_are_refused_before_anything_runs(argv, words, capsys, tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert commands.main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# dependencies and the version, declared once
# ---------------------------------------------------------------------------------------------
def test_requirements_cpu_holds_the_cpu_extras_pins_and_run_sh_the_extras():
    import tomllib
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [ln.strip() for ln in (ROOT / "requirements-cpu.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert pins == meta["optional-dependencies"]["cpu"]
    extras = set(meta["optional-dependencies"]) - {"cpu"}
    run_sh = re.search(r'^EXTRAS="([a-z,]+)"', (ROOT / "run.sh").read_text(), re.M).group(1)
    assert set(run_sh.split(",")) == extras, "run.sh installs every extra but cpu, on every machine"
    assert "version" in meta["dynamic"] and "version" not in meta


def test_the_installed_version_is_the_packages():
    import importlib.metadata

    from fastbci import __version__
    assert importlib.metadata.version("fastbci") == __version__


def test_sigint_during_start_up_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C while the command starts (imports, configuration, data loading): exit 130 and one
    line, no traceback, no output folder half made."""
    out, hit = tmp_path / "run", 0
    for delay in (0.3, 1.0):
        p = subprocess.Popen([sys.executable, "-m", "fastbci.train", str(ROOT / "configs" / "official.yaml"),
                              f"output_dir={out}", f"checkpoint_dir={out}/checkpoint",
                              f"dataset.dataset_dir={tmp_path / 'no-data'}"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
        if p.returncode == 2:  # it had already failed on the missing data: too fast to catch
            continue
        if "Traceback" in stderr and "/fastbci/" not in stderr.replace("\\", "/"):
            continue  # Python's own start-up (site, runpy) before any fastbci code ran: too early
        # 130, or killed by the SIGINT itself (-2), which a shell reports as 130 too
        assert p.returncode in (130, -signal.SIGINT), stderr
        assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].endswith("interrupted")
        assert not out.exists()
        hit += 1
    assert hit, "the command ended before the signal: nothing was tested"


def test_the_gpu_mirrors_lean_list_is_drawn_from_pyproject():
    """scripts/gpu_mirror_env.py installs a lean subset (no word decoder, no LLM) for the
    kernel tests: every package it names is one pyproject.toml declares."""
    import importlib.util
    import tomllib
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=;\[ ]", d)[0].lower() for d in
                [*meta["dependencies"], *(x for deps in meta["optional-dependencies"].values()
                                          for x in deps)]}
    spec = importlib.util.spec_from_file_location("gpu_mirror_env", ROOT / "scripts" / "gpu_mirror_env.py")
    mirror = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mirror)
    assert set(mirror.TEST_REQUIREMENTS) <= declared, set(mirror.TEST_REQUIREMENTS) - declared
