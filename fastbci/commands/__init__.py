"""``fastbci <command>``: one command with subcommands, the way git, torchrun and optuna work.

This package is the top layer: argument parsing and printing only. What a command does is a
library function with typed arguments, callable from Python (``fastbci.training``,
``fastbci.evaluation``, ``fastbci.calibration``, ``fastbci.lm``, ``fastbci.synth``,
``fastbci.sweep``...). Each command is a module here with

* ``HELP``: its one line in ``fastbci --help``;
* ``add_arguments(parser)``: its options (:mod:`fastbci.commands.options` holds the ones
  several commands share, so that one concept has one spelling);
* ``run(args) -> int``: the library call and the printing; the exit status.

``python -m fastbci.<command>`` is an equal alias (:func:`entry`). Errors become one message
and the exit status of the README's table in :func:`fastbci.errors.run_command`; the files a
command writes are recorded as its own (:mod:`fastbci.outputs`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType
from typing import NoReturn, Sequence

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
        "decoder with the official recipe and a fused data path.", epilog=EPILOG, allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"fastbci {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        mod = command_module(name)
        sp = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                            epilog=getattr(mod, "EPILOG", None), allow_abbrev=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.prog = f"fastbci {name}"
        mod.add_arguments(sp)
        sp.set_defaults(_module=mod)
    _no_abbreviations(p)
    return p


def _no_abbreviations(p: argparse.ArgumentParser) -> None:
    """No parser of the tree takes an option's prefix for the option (``--lm-weight`` is not
    ``--lm-weights``): a typo or another command's option is an error, never another value."""
    p.allow_abbrev = False
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                _no_abbreviations(sp)


def parse(p: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``p.parse_args(argv)``, where ``key=value`` overrides may also come after options
    (``fastbci train CFG --overwrite num_training_batches=10``): tokens argparse leaves over
    that look like overrides join the command's ``overrides``; anything else is an error."""
    args, extra = p.parse_known_args(argv)
    if extra:
        takes = hasattr(args, "overrides")
        if takes and all("=" in t and not t.startswith("-") for t in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            p.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``fastbci [--version] COMMAND ...``: parse, run, and return the exit status (argparse's
    own errors exit 2; a Ctrl-C anywhere is 130 with one line)."""
    from fastbci import outputs
    from fastbci.errors import run_command
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(parser(), argv)
    except SystemExit as e:  # --help, --version (0) and argparse's own errors (2), printed
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except KeyboardInterrupt:
        print("fastbci: interrupted", file=sys.stderr)
        return 130
    args._argv = argv  # what the command was started with (a sweep names it to continue)
    sub = getattr(args, "subcommand", None)  # lm, sweep
    mod, prog = args._module, f"fastbci {args.command}" + (f" {sub}" if sub else "")
    with outputs.writing_as(args.command):
        before = getattr(mod, "before_run", None)  # train hands a torchrun worker over
        if before is not None:
            code = before(args)
            if code is not None:
                return code
        return run_command(lambda: mod.run(args), prog=prog)


def entry(command: str | None = None) -> NoReturn:
    """The process entry point: the ``fastbci`` console script (``command`` None) and the
    ``python -m fastbci.COMMAND`` aliases. Exits with the command's status; a ``torchrun`` worker
    leaves without interpreter finalisation (:func:`exit_worker`)."""
    argv = sys.argv[1:] if command is None else [command, *sys.argv[1:]]
    try:
        code = main(argv)
    except KeyboardInterrupt:  # between the handlers above (imports, parsing)
        print("fastbci: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        code = 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_worker(code)
    sys.exit(code)


def exit_worker(code: int) -> NoReturn:
    """End a ``torchrun`` worker process: flush, then leave without interpreter finalisation.
    Gloo's C++ threads can still hold Python objects when the interpreter tears itself down,
    which aborts the process (SIGABRT, "terminate called without an active exception") after a
    successful run and makes torchrun report a failure; the process group is already destroyed
    and every file closed by then (:func:`fastbci.training.launch.run_distributed`)."""
    import logging
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
