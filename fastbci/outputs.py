"""Nothing of the user's is ever destroyed: the record of what fastbci wrote, and the one rule
every command that writes follows before it writes.

The record
----------
Every file fastbci writes (through :mod:`fastbci.fileio`) is listed in a marker,
``.fastbci-outputs.json``, in its folder, with the command that wrote it (``train``,
``evaluate``, ``lm``...: the command run, or for a library call the kind of output its function
writes, :func:`writes`; ``python`` for any other write). A file that is not listed is not
fastbci's: fastbci never replaces or deletes it.

The rule (:func:`check_dir`, :func:`check_file`)
------------------------------------------------
A command refuses (exit 2), and ``--overwrite`` / ``fastbci.overwrite=true`` does not lift the
refusal, when an output

* is, contains, or lies inside an input the command reads (the data folder, a checkpoint,
  logits, a corpus, an n-best, a model folder);
* holds files that this kind of command did not write (files that are not in the record, or
  that another kind of command wrote: a calibration never replaces a training run's files).

An output that holds only what the same kind of command wrote before is replaced only with
``--overwrite`` (and then only the recorded files are deleted: :func:`clear`).
"""
from __future__ import annotations

import contextlib
import contextvars
import fcntl
import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from fastbci.errors import FastbciError

MARKER = ".fastbci-outputs.json"
TMP_MARK = ".tmp"  # fastbci's temporaries: .NAME.tmpPID (fileio.tmp_path_for)

#: who may replace whose files: a command replaces the files of its own group only
GROUPS = {"train": "run", "demo": "run", "sweep": "run", "evaluate": "words", "lm": "words",
          "calibrate": "calibrate", "synth": "synth"}
_LIBRARY = "python"
_writer: contextvars.ContextVar[str] = contextvars.ContextVar("fastbci_writer", default=_LIBRARY)
_recorded: set[tuple[str, str, str]] = set()  # (folder, name, writer) recorded by this process


class OutputError(FastbciError, ValueError):
    """An output that would destroy an input or a file fastbci did not write (exit 2)."""
    kind = "output error"


@contextlib.contextmanager
def writing_as(command: str) -> Iterator[None]:
    """Record the files written inside as written by ``command`` (the commands set this)."""
    token = _writer.set(command)
    try:
        yield
    finally:
        _writer.reset(token)


def writer() -> str:
    return _writer.get()


def writes(kind: str) -> Callable:
    """Decorate a library function that writes outputs of ``kind`` (``train``, ``evaluate``...):
    its files are recorded as ``kind``'s, unless a command already set who writes (the demo's
    training run is the demo's)."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if _writer.get() != _LIBRARY:
                return fn(*args, **kwargs)
            with writing_as(kind):
                return fn(*args, **kwargs)
        return wrapper
    return decorate


def _group(command: str) -> str:
    return GROUPS.get(command, command)


def may_replace(command: str, by: str) -> bool:
    """Whether ``command`` may replace a file that ``by`` wrote (its own group's; a library
    call, outside any command, counts as every command's)."""
    return _LIBRARY in (command, by) or _group(by) == _group(command)


def _who(command: str) -> str:
    return "a fastbci library call" if command == _LIBRARY else f"'fastbci {command}'"


# ---------------------------------------------------------------------------------------------
# the record
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read(folder: Path) -> dict[str, dict]:
    try:
        with open(folder / MARKER) as f:
            files = json.load(f).get("files", {})
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def _write(folder: Path, files: dict[str, dict]) -> None:
    path = folder / MARKER
    if not files:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    tmp = folder / f".{MARKER}{TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump({"what": "files written by fastbci (a command refuses to replace any other)",
                       "files": files}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:  # a full disk leaves the old record and no temporary
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def record(path: str | os.PathLike, *, tree: bool = False, prefix: bool = False) -> None:
    """List ``path`` in its folder's marker as written by the current command (``tree``: a
    folder whose whole content is fastbci's, e.g. TensorBoard's; ``prefix``: every file of the
    folder whose name starts with this one's too, e.g. a database and the journal and lock files
    its engine makes beside it). Never raises: a marker that cannot be written leaves the file
    unlisted (then treated as the user's: the safe side)."""
    p = Path(os.path.abspath(path))
    folder, name, who = p.parent, p.name, writer()
    if name == MARKER or (str(folder), name, who) in _recorded:
        return
    try:
        with _locked(folder):
            files = _read(folder)
            entry = {"by": who, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            entry.update({k: True for k, v in (("tree", tree), ("prefix", prefix)) if v})
            if files.get(name, {}).get("by") != who or tree or prefix:
                files[name] = entry
                _write(folder, files)
        _recorded.add((str(folder), name, who))
    except OSError:
        pass


def recorded(folder: str | os.PathLike) -> dict[str, dict]:
    """``{name: {"by": command, ...}}`` of the files fastbci wrote in ``folder``."""
    return _read(Path(folder))


def _forget(folder: Path, names: Iterable[str]) -> None:
    names = set(names)
    with _locked(folder):
        files = {k: v for k, v in _read(folder).items() if k not in names}
        _write(folder, files)
    _recorded.difference_update({k for k in _recorded if k[0] == str(folder) and k[1] in names})


# ---------------------------------------------------------------------------------------------
# what a folder holds
# ---------------------------------------------------------------------------------------------
@dataclass
class Holdings:
    """The files under a folder, by owner: ``own`` (written by the command's group),
    ``others`` (fastbci's, by another kind of command: ``(path, command)``) and ``foreign``
    (not in fastbci's record)."""
    own: list[Path] = field(default_factory=list)
    others: list[tuple[Path, str]] = field(default_factory=list)
    foreign: list[Path] = field(default_factory=list)


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and TMP_MARK in name


def holdings(folder: str | os.PathLike, command: str | None = None) -> Holdings:
    """Every file under ``folder`` (recursively), sorted by owner for ``command``."""
    out, command = Holdings(), command or writer()

    def visit(d: Path, owner: str | None) -> None:
        files = recorded(d)
        prefixes = [(n, i) for n, i in files.items() if i.get("prefix")]
        for entry in sorted(d.iterdir()):
            if entry.name == MARKER:
                continue
            info = files.get(entry.name) or next(
                (i for n, i in prefixes if entry.name.startswith(n)), None)
            by = owner or (info or {}).get("by")
            if entry.is_dir() and not entry.is_symlink():
                visit(entry, by if (owner or (info or {}).get("tree")) else None)
                continue
            if by is None and _is_temporary(entry.name):
                by = command  # a killed writer's temporary: fastbci's own
            if by is None:
                out.foreign.append(entry)
            elif may_replace(command, by):
                out.own.append(entry)
            else:
                out.others.append((entry, by))
    visit(Path(folder), None)
    return out


# ---------------------------------------------------------------------------------------------
# the rule
# ---------------------------------------------------------------------------------------------
def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def meeting(out: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike | None]],
            *, folder: bool) -> str | None:
    """Why ``out`` meets an input (``(what, path)`` pairs; None paths are skipped), or None:
    the same path, ``out`` inside an input folder, or (``folder``) an input inside ``out``.
    Symbolic links are followed, so two names of one file meet."""
    o = _real(out)
    for what, path in inputs:
        if path is None:
            continue
        i = _real(path)
        if o == i:
            return f"it is the {what} {path}, which the command reads"
        if _inside(o, i):
            return f"it lies inside the {what} {path}, which the command reads"
        if folder and _inside(i, o):
            return f"it contains the {what} {path}, which the command reads"
    return None


def _few(paths: Sequence, n: int = 3) -> str:
    names = [str(p[0] if isinstance(p, tuple) else p) for p in paths]
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


@dataclass
class Plan:
    """What a command may do to its output folder: ``clear`` (fastbci's own files to delete
    first, with ``--overwrite``) and ``existing`` (whether it held any of them)."""
    folder: Path
    clear: list[Path] = field(default_factory=list)


def check_dir(out: str | os.PathLike, *, inputs=(), overwrite: bool = False, option: str = "--out",
              hint: str = "", command: str | None = None) -> Plan:
    """The rule for an output folder a command owns (train's output_dir, synth's release,
    a sweep): a new or empty folder, or one that holds only what this kind of command wrote
    (replaced with ``overwrite``). Raises :class:`OutputError` naming the folder and why."""
    out, command = Path(out), command or writer()
    why = meeting(out, inputs, folder=True)
    if why:
        raise OutputError(f"{option} {out}: {why}; writing there could destroy it (this is "
                          "refused even with --overwrite): choose another folder")
    if os.path.lexists(out) and not out.is_dir():
        raise OutputError(f"{option} {out} exists and is not a folder (a file, or a link that leads "
                          "nowhere or back to itself): choose another folder")
    if not out.is_dir():
        return Plan(out)
    h = holdings(out, command)
    refuse_foreign(out, h, command, option)
    if h.own and not overwrite:
        raise OutputError(f"{option} {out} already holds the outputs of an earlier "
                          f"{_who(command)} ({_few(h.own)}): "
                          f"{hint or 'pass --overwrite to replace them'}, or choose another folder")
    return Plan(out, h.own)


def refuse_foreign(out: Path, h: Holdings, command: str, option: str) -> None:
    if h.foreign:
        raise OutputError(
            f"{option} {out} holds {len(h.foreign)} file(s) that fastbci did not write "
            f"({_few(h.foreign)}); fastbci never replaces or deletes files it did not write "
            "(--overwrite does not change this): choose another folder, or move those files "
            "away if they are yours")
    if h.others:
        by = sorted({b for _, b in h.others})
        raise OutputError(
            f"{option} {out} holds the outputs of {_who(by[0])} ({_few(h.others)}), "
            f"which {_who(command)} never replaces (--overwrite does not change this): "
            "choose another folder")


def check_file(path: str | os.PathLike, *, inputs=(), overwrite: bool = False, option: str = "--out",
               command: str | None = None) -> None:
    """The rule for one output file: not an input nor inside an input folder; if it exists,
    a file this kind of command wrote, replaced only with ``overwrite``."""
    p, command = Path(path), command or writer()
    why = meeting(p, inputs, folder=False)
    if why:
        raise OutputError(f"{option} {p}: {why}; this is refused even with --overwrite: "
                          "choose another file")
    if p.is_dir():
        raise OutputError(f"{option} {p} is a folder: give a file name")
    if not (p.exists() or p.is_symlink()):
        return
    info = recorded(p.parent).get(p.name)
    if info is None:
        raise OutputError(f"{option} {p} exists and fastbci did not write it; fastbci never "
                          "replaces a file it did not write (--overwrite does not change "
                          "this): choose another file name, or move it away if it is yours")
    by = info.get("by", _LIBRARY)
    if not may_replace(command, by):
        raise OutputError(f"{option} {p} was written by {_who(by)}, which {_who(command)} never "
                          "replaces: choose another file name")
    if not overwrite:
        raise OutputError(f"{option} {p} already exists (written by an earlier {_who(by)}): "
                          "pass --overwrite to replace it, or choose another file name")


def check_files(paths: Iterable[tuple[str, str | os.PathLike | None]], **kw) -> None:
    """:func:`check_file` for each ``(option, path)`` (None paths skipped), and no two outputs
    the same file."""
    seen: dict[Path, str] = {}
    for option, path in paths:
        if path is None:
            continue
        real = _real(path)
        if real in seen:
            raise OutputError(f"{option} and {seen[real]} name the same file {path}: give "
                              "each output its own file")
        seen[real] = option
        check_file(path, option=option, **kw)


def clear(plan: Plan) -> None:
    """Delete the recorded files the plan lists (and their marker entries), then the folders
    that this left empty; nothing else is touched."""
    by_folder: dict[Path, list[str]] = {}
    for f in plan.clear:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
        by_folder.setdefault(f.parent, []).append(f.name)
    for folder, names in sorted(by_folder.items(), key=lambda kv: -len(kv[0].parts)):
        if folder.is_dir():
            _forget(folder, names)
    for d in sorted({p for f in plan.clear for p in f.parents if _inside(p, plan.folder)},
                    key=lambda d: -len(d.parts)):
        if d != plan.folder and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            _forget(d.parent, [d.name])  # a tree entry (a folder fastbci's as a whole)
