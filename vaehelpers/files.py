"""Files that several processes may write at once: atomic replacement, a lock per entry, and folders
that cannot take them (a full disk, a read-only folder) named in one sentence.

Used by the run folders (:mod:`vaehelpers.store`), the data cache (:mod:`vaehelpers.cache`) and the
report's build.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from .errors import OneSentenceError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, put back: the process's umask, for the files written here

FULL = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


class NotWritable(OneSentenceError, OSError):
    """A folder that cannot take a file: its disk is full, or it is read-only. Its message is one sentence
    naming the folder, the space needed and free, and what to do; IPython shows only that."""

    def __str__(self) -> str:
        return str(self.strerror)


def size_text(n: float) -> str:
    """A byte count as people read it: '812 kB', '3.4 MB', '1.2 GB' (powers of 1000)."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit in ("bytes", "kB") else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError


def free_bytes(folder: Path) -> int:
    """The bytes free for this user in ``folder``'s filesystem."""
    return shutil.disk_usage(folder).free


def no_room(folder: Path, need: int, what: str) -> NotWritable:
    """The error for a folder whose filesystem lacks ``need`` bytes for ``what`` (0: a size not known)."""
    needed = f"{size_text(need)} needed, " if need else ""
    return NotWritable(errno.ENOSPC, f"Not enough space in {folder} for {what}: {needed}"
                                     f"{size_text(free_bytes(folder))} free; free some space there or choose another "
                                     "folder, then run the same command again.")


def explain(error: OSError, folder: Path, need: int, what: str) -> OSError:
    """``error`` as a :class:`NotWritable` where the disk is full or the folder read-only, else unchanged."""
    if isinstance(error, NotWritable) or error.errno not in FULL + READ_ONLY:
        return error
    if error.errno in FULL:
        return no_room(folder, need, what)
    return NotWritable(error.errno, f"Cannot write {what} in {folder}: it is read-only ({error.strerror}); make it "
                                    "writable or choose another folder, then run the same command again.")


def ensure_writable(folder: Path, what: str) -> None:
    """Make ``folder`` (and its parents) and check, by writing a file there, that it takes files; else
    :class:`NotWritable` in one sentence naming ``what`` was to be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        raise explain(e, existing, 0, what) from None


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` by ``data`` at once: written to a temporary file of a unique name in the same
    folder, flushed to disk, then renamed over ``path``. A reader sees the old file or the new one; where
    the write fails, the old file stays and no temporary file is left. A full disk or a read-only folder
    is a :class:`NotWritable` naming the folder, the space needed and free. ``mode``: the file's permissions
    (default: those of a file made by ``open()`` under the process's umask)."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_UMASK if mode is None else mode)  # not mkstemp's private 0600, unless asked
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise explain(e, path.parent, len(data), path.name) from None
        raise


def torch_save_atomic(path: Path, obj: object) -> None:
    """:func:`torch.save` through :func:`write_atomic`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


@contextlib.contextmanager
def locked(lock_file: Path, what: str) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock_file`` (created if missing) for the ``with`` block; ``as`` gives whether
    another process held it first.

    A second process asking for the same lock says, once, that it waits for ``what``, and
    goes on when the first is done, whether it finished or died (the system releases the lock).
    """
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock_file, "a")
    except OSError as e:
        raise explain(e, lock_file.parent, 0, lock_file.name) from None
    with f:
        waited = False
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process using {what} (lock {lock_file})", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
            waited = True
        try:
            yield waited
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
