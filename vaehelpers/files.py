"""Files that several processes may write at once: atomic replacement and a lock per entry.

Used by the run folders (:mod:`vaehelpers.store`) and the data cache (:mod:`vaehelpers.data`).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import torch

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, put back: the process's umask, for the files written here

def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` at once: written to a temporary file of a unique name in the same
    folder, flushed to disk, then renamed over ``path``. A reader sees the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # the permissions of a file made by open(), not mkstemp's private 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def torch_save_atomic(path: Path, obj: object) -> None:
    """:func:`torch.save` through :func:`write_atomic`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


@contextlib.contextmanager
def locked(lock_file: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing) for the ``with`` block.

    A second process asking for the same lock says, once, that it waits for ``what``, and
    goes on when the first is done, whether it finished or died (the system releases the lock).
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process using {what} (lock {lock_file})", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
