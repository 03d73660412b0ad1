"""``fastbci <command>``: one command with subcommands, the way git, torchrun and optuna work.

This package is the top layer: argument parsing and printing only. What a command does is a
library function with typed arguments, callable from Python (``fastbci.training``,
``fastbci.evaluation``, ``fastbci.calibration``, ``fastbci.lm``, ``fastbci.synth``,
``fastbci.sweep``...). Each command is a module here with

* ``HELP``: its one line in ``fastbci --help``;
* ``add_arguments(parser)``: its options (:mod:`fastbci.commands.options` holds the ones
  several commands share, so that one concept has one spelling);
* ``run(args) -> int``: the library call and the printing; the exit status.

``python -m fastbci.<command>`` is an equal alias (:func:`alias`). Errors become one message
and the exit status of the README's table in :func:`fastbci.errors.run_command`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Sequence

#: the commands, in the order ``fastbci --help`` lists them
COMMANDS = ("train", "evaluate", "calibrate", "demo", "doctor", "lm", "synth", "sweep")

EPILOG = ("Exit status: 0 done, 1 doctor found a severe risk, 2 bad input (configuration, data, "
          "checkpoint, output folder, disk), 3 blank collapse, 4 non-finite loss, 5 optional "
          "component missing, 130 interrupted. 'fastbci COMMAND --help' for each command; "
          "'python -m fastbci.COMMAND' is the same command.")


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"fastbci.commands.{name}")


def parser() -> argparse.ArgumentParser:
    """The whole ``fastbci`` parser: one subparser per command (their modules import only
    argparse-level code; the libraries load when a command runs)."""
    from fastbci import __version__
    p = argparse.ArgumentParser(
        prog="fastbci", description="Train, evaluate and decode the Brain-to-Text '25 phoneme "
        "decoder with the official recipe and a fused data path.", epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"fastbci {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        mod = command_module(name)
        sp = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                            epilog=getattr(mod, "EPILOG", None),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.prog = f"fastbci {name}"
        mod.add_arguments(sp)
        sp.set_defaults(_module=mod)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``fastbci [--version] COMMAND ...``: the console script."""
    from fastbci.errors import run_command
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    mod = args._module
    before = getattr(mod, "before_run", None)  # e.g. train hands a torchrun worker over
    if before is not None:
        code = before(args)
        if code is not None:
            return code
    return run_command(lambda: mod.run(args), prog=f"fastbci {args.command}")


def alias(name: str, argv: Sequence[str] | None = None) -> int:
    """``python -m fastbci.NAME ARGS`` = ``fastbci NAME ARGS``."""
    return main([name, *(sys.argv[1:] if argv is None else argv)])
