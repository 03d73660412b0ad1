"""What every fault case of tests/faults checks, in one place: the command's exit status, a
message that names what and where, no traceback, no input changed, no partial output left.

The suite's modules import it by name (``from faultkit import ...``): tests/faults has no
``__init__.py``, so pytest puts this folder on ``sys.path`` for its test modules.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

#: the module whose ``main(argv) -> int`` runs each command before the commands moved to
#: fastbci.commands (``fastbci.commands.main([name, ...])`` once they have)


def command(name: str) -> Callable[[Sequence[str]], int]:
    """``fastbci NAME ARGS`` run in this process: ``run(argv) -> exit status``."""
    from fastbci.commands import main

    def run(argv: Sequence[str]) -> int:
        return main([name, *(str(a) for a in argv)])

    return run


#: a tiny, fast training run (one GRU layer of 8 units, a few batches) on the small release
TINY = ["model.n_units=8", "model.n_layers=1", "model.rnn_dropout=0.0", "dataset.batch_size=4",
        "dataset.days_per_batch=2", "num_training_batches=2", "batches_per_train_log=1",
        "batches_per_val_step=2", "lr_warmup_steps=1", "lr_warmup_steps_day=1",
        "fastbci.impl=reference", "fastbci.device=cpu", "fastbci.progress=false", "fastbci.plot=false"]


def train_argv(config: Path, out: Path, *extra: str) -> list[str]:
    """The trainer's command line for a tiny run writing into ``out``."""
    return [str(config), f"output_dir={out}", f"checkpoint_dir={out}/checkpoint", *TINY, *extra]


def digest(*roots: Path) -> dict[str, str]:
    """``{path: what it holds}`` of every file, folder and link under ``roots`` (a link is its
    target, never followed: a link loop is an input too)."""
    out: dict[str, str] = {}

    def visit(p: Path) -> None:
        if p.is_symlink():
            out[str(p)] = "link -> " + os.readlink(p)
        elif p.is_dir():
            out[str(p)] = "folder"
            for q in sorted(p.iterdir()):
                visit(q)
        elif p.exists():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p)] = "absent"

    for r in roots:
        visit(Path(r))
    return out


def temporaries(*roots: Path) -> list[str]:
    """fastbci's temporary files (``.NAME.tmpPID``) under ``roots``: what a write that did not
    finish would leave."""
    found = []
    for r in roots:
        r = Path(r)
        if r.is_dir():
            found += [str(p) for p in r.rglob(".*.tmp*")]
    return found


def files_under(root: Path) -> list[str]:
    """The data files under ``root`` (fastbci's record of its outputs excluded)."""
    from fastbci import outputs
    root = Path(root)
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != outputs.MARKER)


@dataclass
class Case:
    """One fault: ``run()`` returns the exit status; the message must hold every one of
    ``words``; ``inputs`` must be unchanged; ``outputs`` (files or folders) must not be left
    partial: absent, or as ``expect_outputs`` says (a callable that checks them)."""
    run: Callable[[], int]
    words: Sequence[str]
    inputs: Sequence[Path] = ()
    outputs: Sequence[Path] = ()
    code: int = 2
    expect_outputs: Callable[[], None] | None = None
    after: Callable[[], None] | None = None


def check(case: Case, capsys) -> str:
    """Run ``case`` and check everything a fault case promises; returns stderr."""
    before = digest(*case.inputs)
    capsys.readouterr()
    code = case.run()
    out, err = capsys.readouterr()
    assert code == case.code, f"exit status {code}, want {case.code}\nstderr:\n{err}\nstdout:\n{out[-2000:]}"
    for w in case.words:
        assert w in err, f"the message lacks {w!r}:\n{err}"
    assert "Traceback" not in err, err
    assert digest(*case.inputs) == before, "an input file was modified"
    if case.expect_outputs is not None:
        case.expect_outputs()
    else:
        left = [str(p) for p in case.outputs if Path(p).exists() and
                (Path(p).is_file() or files_under(Path(p)))]
        assert not left, f"a failed command left output: {left}"
    parents = {Path(p) if Path(p).is_dir() else Path(p).parent for p in case.outputs}
    assert not temporaries(*parents), f"temporary files left: {temporaries(*parents)}"
    if case.after is not None:
        case.after()
    return err


# ---------------------------------------------------------------------------------------------
# a full disk
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def small_disk(folder: Path, size: str = "64k", fill: bool = False, readonly: bool = False):
    """A tmpfs of ``size`` mounted on ``folder`` (root only: skipped with the reason where
    mounting is not allowed), unmounted afterwards; ``fill``: a ballast file takes all its
    space, so that the first byte any writer writes fails with ENOSPC; ``readonly``: mounted
    read-only (EROFS, for root too)."""
    import pytest
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs to fill a disk here (needs root and mount "
                    f"privileges): {(proc.stderr or proc.stdout).strip()[:200]}")
    try:
        if fill:
            with open(folder / "ballast", "wb", buffering=0) as f:
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 4096)
            _fill_to_the_last_byte(folder / "ballast")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill_to_the_last_byte(path: Path) -> None:
    """Append single bytes until even one more fails (a page may have had room left)."""
    with open(path, "ab", buffering=0) as f:
        for _ in range(8192):
            try:
                f.write(b"\0")
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                return


# ---------------------------------------------------------------------------------------------
# a writer killed midway
# ---------------------------------------------------------------------------------------------
class Killed(BaseException):
    """The simulated kill: a BaseException, as KeyboardInterrupt, so that no ``except
    Exception`` of the code under test stops it."""


class _Dying:
    """A file open for writing that dies at its first write: half of the bytes are written and
    flushed, then ``at_kill()`` looks at the disk, then :class:`Killed` is raised."""

    def __init__(self, f, at_kill: Callable[[], None]):
        self._f, self._at_kill = f, at_kill

    def write(self, data):
        if len(data) == 0:
            return 0
        self._f.write(data[:max(1, len(data) // 2)])
        self._f.flush()
        self._at_kill()
        raise Killed()

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False


def target_of(opened: Path) -> Path:
    """The file that a write to ``opened`` produces: fastbci's temporary ``.NAME.tmpPID`` makes
    NAME in the same folder; any other file is itself."""
    m = re.fullmatch(r"\.(.+)\.tmp\d+", opened.name)
    return opened.with_name(m.group(1)) if m else opened


@contextlib.contextmanager
def killed_while_writing(monkeypatch, target: Path):
    """The writer of ``target`` dies at its first write (:class:`_Dying`), whatever file it
    writes to produce it (itself, or a temporary beside it). Yields a list that then holds
    ``(the file that died, what target held at that moment: its bytes, None when absent)``; a
    writer that kills nothing partial leaves ``old`` there."""
    import builtins
    real_open = builtins.open
    died: list[tuple[str, bytes | None]] = []

    def at_kill():
        held = target.read_bytes() if target.is_file() else None
        died[-1] = (died[-1][0], held)

    def dying_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        if (isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and not died
                and target_of(Path(os.path.abspath(file))) == Path(os.path.abspath(target))):
            died.append((str(file), b"(not written yet)"))
            return _Dying(f, at_kill)
        return f

    monkeypatch.setattr(builtins, "open", dying_open)
    try:
        yield died
    finally:
        monkeypatch.setattr(builtins, "open", real_open)


def same_or_absent(path: Path, old: bytes | None) -> None:
    """``path`` holds ``old`` (None: it does not exist)."""
    if old is None:
        assert not path.exists(), f"{path} exists: a partial file"
    else:
        assert path.exists() and path.read_bytes() == old, f"{path} was changed (a partial file?)"
