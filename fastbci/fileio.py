"""Writing files so that nothing is lost: every file fastbci rewrites goes to a temporary file
in the same folder, is flushed to disk (fsync), renamed over the old one and the folder is
synced, so a kill or a full disk at any moment leaves either the old file or the new one.
Every file written here is listed in its folder's record of fastbci's outputs
(:mod:`fastbci.outputs`), so that no command ever replaces a file fastbci did not write.
A full disk (or a quota) is a :class:`StorageError` that names the device and the file.

Reading: :func:`path_problem` says what stops a path from being read as a file or a folder
(missing, a directory, a symbolic-link loop, unreadable...) and :func:`file_kind` what a file
holds (empty, text, HDF5, a zip archive, a pickle...), so that the configuration, the data and
the checkpoint loaders all say what a bad path is.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Callable, Iterator

from fastbci import outputs
from fastbci.errors import FastbciError

_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
TMP_MARK = outputs.TMP_MARK


class StorageError(FastbciError, OSError):
    """A file could not be written (no space left, quota, read-only or missing folder); the
    message names the device or the file, and that what was written before is intact (every
    rewrite is atomic)."""
    kind = "storage error"

    def __str__(self) -> str:
        return f"{self.strerror or OSError.__str__(self)}; the files written before are intact"


def _device_of(path: Path) -> str:
    """The mount point holding ``path`` (for messages)."""
    p = Path(os.path.abspath(path)).parent
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


def storage_error(e: BaseException, path: Path) -> StorageError | None:
    """A :class:`StorageError` for an error raised while writing ``path`` when it is a storage
    problem: an OSError (ENOSPC, EDQUOT, EROFS, EACCES, ENOENT; EISDIR: the path is a folder;
    ENOTDIR, EEXIST, ELOOP: a folder of its path is a file or a link loop) or torch's writer failure
    (``PytorchStreamWriter failed writing file`` / ``unexpected pos``, which is what a full
    disk looks like inside ``torch.save``). None for anything else."""
    if isinstance(e, StorageError):
        return e
    if isinstance(e, OSError) and e.errno in _SPACE_ERRNOS:
        return StorageError(e.errno, f"no space left on {_device_of(path)} writing {path}")
    if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.ENOENT):
        return StorageError(e.errno, f"cannot write {path}: {os.strerror(e.errno)}")
    if isinstance(e, OSError) and e.errno == errno.EISDIR:
        return StorageError(e.errno, f"cannot write {path}: it is a folder, not a file")
    if isinstance(e, OSError) and e.errno in (errno.ENOTDIR, errno.EEXIST, errno.ELOOP):
        folder = e.filename if e.filename is not None else path.parent
        what = path_problem(folder, want="dir") or "is not a folder"
        return StorageError(e.errno, f"cannot write {path}: a folder of its path, {folder}, {what}")
    text = str(e)
    if isinstance(e, RuntimeError) and ("failed writing" in text or "unexpected pos" in text):
        return StorageError(errno.ENOSPC, f"no space left on {_device_of(path)} writing {path} "
                                          f"(torch: {text.splitlines()[0][:120]})")
    return None


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write tmp`` -> ``p`` replaced by the finished ``tmp``
    (fsync of the file, rename, fsync of the folder). On any error the temporary file is
    removed, ``p`` is untouched, and a storage problem becomes a :class:`StorageError`."""
    path = Path(path)
    tmp = tmp_path_for(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        outputs.record(path)
    except BaseException as e:
        err = storage_error(e, path)
        if err is not None:
            raise err from None
        raise
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write ``path`` atomically: ``write(f)`` gets an open file (``mode`` "w" or "wb")."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            write(f)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line (one write, then flush); a storage problem is a :class:`StorageError`
    and the file keeps every complete line written before."""
    path = Path(path)
    try:
        with open(path, "a") as f:
            if f.tell() == 0:
                outputs.record(path)
            f.write(line.rstrip("\n") + "\n")
            f.flush()
    except OSError as e:
        err = storage_error(e, path)
        if err is not None:
            raise err from None
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.tmpPID`` files that killed writers left in ``folder`` (those of live
    processes other than this one are kept); returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".*{TMP_MARK}*"):
        pid = p.name.rsplit(TMP_MARK, 1)[-1]
        if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None, so that JSON files hold
    only standard JSON (``json.dumps`` would write the non-standard ``NaN`` / ``Infinity``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any, **kw) -> str:
    """Standard JSON (non-finite floats written as null)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kw)


# ---------------------------------------------------------------------------------------------
# what a path is
# ---------------------------------------------------------------------------------------------
def _missing(p: Path) -> str:
    if os.path.islink(p):
        return f"is a broken symbolic link (to {os.readlink(p)}, which does not exist)"
    if not p.parent.exists():
        return f"not found (its folder {p.parent} does not exist either)"
    return "not found"


def path_problem(path: str | os.PathLike, want: str = "file") -> str | None:
    """None when ``path`` can be read as ``want`` (``"file"``: a regular file, or a link to one,
    that this process may open; ``"dir"``: a folder it may list), else what it is instead, as
    words that follow the path in a message: ``not found``, ``is a directory, not a file``,
    ``is a symbolic link loop``, ``cannot be read (permission denied)``..."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return _missing(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link loop (a link that leads back to itself)"
        if e.errno == errno.ENOTDIR:
            return "not found (a folder of its path is a file)"
        if e.errno == errno.EACCES:
            return "cannot be reached (permission denied on a folder of its path)"
        return f"cannot be examined ({os.strerror(e.errno) if e.errno else e})"
    if want == "dir":
        if not stat.S_ISDIR(st.st_mode):
            return "is a file, not a folder" if stat.S_ISREG(st.st_mode) else "is not a folder"
        try:
            os.scandir(p).close()
        except PermissionError:
            return "cannot be read (permission denied)"
        return None
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a device, socket or pipe)"
    try:
        with open(p, "rb"):
            pass
    except PermissionError:
        return "cannot be read (permission denied)"
    except OSError as e:
        return f"cannot be opened ({os.strerror(e.errno) if e.errno else e})"
    return None


_MAGIC = ((b"\x89HDF\r\n\x1a\n", "an HDF5 file"), (b"PK\x03\x04", "a zip archive"),
          (b"\x1f\x8b", "gzip-compressed data"))


def file_kind(path: str | os.PathLike) -> str:
    """What a readable file holds, from its first bytes, for messages: ``empty (0 bytes)``,
    ``an HDF5 file``, ``a zip archive`` (what ``torch.save`` writes), ``a pickle``, ``text
    ("first line...")`` or ``binary data``."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "empty (0 bytes)"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "a pickle"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        # a character cut by the 512-byte window is not a decoding error
        text = head[:e.start].decode("utf-8") if len(head) == 512 and e.start >= 509 else None
    if text is not None and "\x00" not in text:
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        return f"text ({first!r})" if first else "blank text"
    return "binary data"


# ---------------------------------------------------------------------------------------------
# HDF5 files, written atomically
# ---------------------------------------------------------------------------------------------
_SPACE_WORDS = ("no space left", "errno = 28", "disk quota exceeded", "errno = 122")


def _storage_in_text(e: BaseException, path: Path) -> StorageError | None:
    """A :class:`StorageError` for a library error whose text says the disk is full (h5py
    reports a failed write of the HDF5 library as ``... errno = 28, error message = 'No space
    left on device'`` in a RuntimeError or an OSError without an errno)."""
    if isinstance(e, (OSError, RuntimeError)) and any(w in str(e).lower() for w in _SPACE_WORDS):
        return StorageError(errno.ENOSPC, f"no space left on {_device_of(path)} writing {path}")
    return None


@contextlib.contextmanager
def atomic_hdf5(path: str | os.PathLike) -> Iterator[Any]:
    """``with atomic_hdf5(p) as f: f.create_group(...)``: an ``h5py.File`` open for writing on
    a temporary file in ``p``'s folder, renamed over ``p`` once complete (:func:`atomic_path`).

    HDF5 writes through a Python file object here, so that a failed write (a full disk) is a
    Python ``OSError`` raised where it happens, never an error the HDF5 library meets later when
    it frees an object (which printed tracebacks and then crashed the process). The file is
    closed before the rename; a close that fails after an error in the block does not hide that
    error; on any error the temporary file is removed and ``p`` is untouched. A full disk is a
    :class:`StorageError` naming ``p``."""
    import h5py
    path = Path(path)
    failed = False
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "w+b") as raw:
                f = h5py.File(raw, "w")
                try:
                    yield f
                except BaseException:
                    failed = True
                    raise
                finally:
                    try:
                        f.close()
                    except Exception:
                        if not failed:
                            raise
    except StorageError:
        raise
    except BaseException as e:
        err = _storage_in_text(e, path)
        if err is not None:
            raise err from None
        raise


def shown_path(path: str | os.PathLike) -> str:
    """``path`` absolute with its symbolic links resolved, for messages; never an error (a link
    loop, which ``Path.resolve`` raises RuntimeError for, is shown as far as it resolves)."""
    try:
        return os.path.realpath(path)
    except (OSError, RuntimeError, ValueError):
        return os.path.abspath(path)


def name_problem(name: Any) -> str | None:
    """None when ``name`` can be the name of one folder inside another (a session's folder in a
    release), else what it is instead, as words that follow the name in a message: a name with
    a path separator (``../../etc``, ``/abs``), ``.`` or ``..``, an empty name or one with a
    NUL would put what is written under it outside the folder meant to hold it."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a name"
    if not name.strip():
        return "is empty"
    if name in (".", ".."):
        return f"is {name!r}, a reference to a folder, not a name"
    if any(sep in name for sep in {"/", os.sep, os.altsep or "/"}):
        kind = "an absolute path" if os.path.isabs(name) else "a path"
        return f"is {kind}, not a name: it holds a path separator"
    if "\x00" in name:
        return "holds a NUL character"
    return None


def check_file(path: str | os.PathLike, what: str, error: type[Exception] = FileNotFoundError) -> Path:
    """``path`` when it can be read as a file, else ``error`` (a ValueError when ``error`` is
    FileNotFoundError and the path exists) with ``what`` and the path: ``the LM file X does not
    exist``, ``... is a directory, not a file``, ``... is a symbolic link loop ...``."""
    path = Path(path)
    problem = path_problem(path)
    if problem is None:
        return path
    if not os.path.lexists(path):
        raise error(f"{what} {path} does not exist")
    raise (ValueError if error is FileNotFoundError else error)(f"{what} {path} {problem}")
