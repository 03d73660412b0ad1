"""Exit statuses shared by every fastbci command, the errors a user can act on, and the one place
where an error becomes a message and an exit status (:func:`run_command`).

Every ``fastbci`` command exits with the same codes: 0 done, 2 bad input
(configuration, data, checkpoint, file system), 3 the blank-collapse watch stopped training, 4
a non-finite loss or gradient stopped it, 130 interrupted (a training run saved a resumable
checkpoint), 5 an optional component the command needs is not installed (flashlight-text for
word decoding, transformers for LLM rescoring). ``fastbci.doctor`` also exits 1 when it finds a
severe risk in a configuration.

Every error fastbci raises for bad input is a :class:`FastbciError`: it carries its exit status
and the words that introduce its message (``configuration error``, ``checkpoint error``...), so
a command never maps error types to codes itself.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

EXIT_OK = 0
EXIT_SEVERE = 1
EXIT_CONFIG = 2
EXIT_COLLAPSE = 3
EXIT_NONFINITE = 4
EXIT_UNAVAILABLE = 5
EXIT_INTERRUPTED = 130


class FastbciError(Exception):
    """An error the user can fix, with a message that names the file, key or value at fault.
    ``exit_code``: the command's exit status; ``kind``: the words before the message. Every
    subclass is known by name (:func:`rebuild`), so that an error of one rank of a distributed
    run is raised again, as the same class, on every rank."""
    exit_code = EXIT_CONFIG
    kind = "error"
    _by_name: dict[str, type] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        FastbciError._by_name[cls.__name__] = cls


class ConfigError(FastbciError, ValueError):
    """A configuration problem, with a message that names the key and what to do."""
    kind = "configuration error"


class CheckpointError(FastbciError, ValueError):
    """A checkpoint that cannot be read or does not fit the model or the run, with the path and
    the reason."""
    kind = "checkpoint error"


class UnavailableError(FastbciError, ImportError):
    """An optional component a command needs is not installed; the message gives the install
    line."""
    exit_code = EXIT_UNAVAILABLE
    kind = "missing component"


class TrainingStopped(RuntimeError):
    """Training stopped before the last batch for a reason the user must see."""
    exit_code = 1


class NonFiniteError(TrainingStopped):
    """A non-finite loss or gradient under ``fastbci.nonfinite_policy=stop``."""
    exit_code = EXIT_NONFINITE


def rebuild(kind: str, message: str) -> Exception:
    """An exception of the class named ``kind`` with ``message``: a :class:`FastbciError`
    subclass or ``ValueError`` / ``FileNotFoundError`` as themselves, anything else as a
    RuntimeError that names the original class."""
    known = {**FastbciError._by_name, "FastbciError": FastbciError, "ValueError": ValueError,
             "FileNotFoundError": FileNotFoundError}
    cls = known.get(kind)
    return cls(message) if cls is not None else RuntimeError(f"{kind}: {message}")


def exit_code_of(status: str) -> int:
    """The exit status of a training run's final ``status`` (``finished``, ``early_stopped`` and
    ``pruned``, a stop its caller asked for, are 0)."""
    return {"collapsed": EXIT_COLLAPSE, "nonfinite": EXIT_NONFINITE,
            "interrupted": EXIT_INTERRUPTED}.get(status, EXIT_OK)


def _message(e: BaseException) -> str:
    text = str(e)
    return text if text.strip() else type(e).__name__


def run_command(fn: Callable[[], int], *, prog: str, report: bool = True) -> int:
    """Run a command's body ``fn()`` (which returns its exit status) and turn what a user can act
    on into one message on stderr, prefixed with ``prog``, and the exit status of the table
    above; ``report=False`` prints nothing (ranks > 0 of a distributed run).

    * a :class:`FastbciError`: ``PROG: KIND: MESSAGE``, its ``exit_code``;
    * a ``FileNotFoundError`` / ``ValueError`` / ``OSError`` from a library (its message names
      the file or value): ``PROG: error: MESSAGE`` on one line, 2;
    * Ctrl-C outside a training loop (which handles it itself): ``PROG: interrupted``, 130.

    ``FASTBCI_DEBUG=1`` re-raises the errors that are not a :class:`FastbciError`, with their
    traceback. Anything else is a bug and keeps its traceback."""
    def say(msg: str) -> None:
        if report:
            print(f"{prog}: {msg}", file=sys.stderr)

    try:
        return fn()
    except FastbciError as e:
        say(f"{e.kind}: {_message(e)}")
        return e.exit_code
    except (FileNotFoundError, ValueError, OSError) as e:
        if os.environ.get("FASTBCI_DEBUG"):
            raise
        say(f"error: {' '.join(_message(e).split())} (FASTBCI_DEBUG=1 shows the traceback)")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
