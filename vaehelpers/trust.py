"""Trust in files that run code when read: a folder or file is used only where this user owns it and no one else
may write it. The Slurm executor keeps its job record and submitit's pickles under these rules: unpickling a task's
result runs code, and a job record names what to wait on."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import OneSentenceError


class Untrusted(OneSentenceError, RuntimeError):
    """A Slurm folder or file another user owns or could write: never read, never unpickled."""


def _others_may_write(st: os.stat_result, acl: bool) -> bool:
    """Whether users other than this one may write a file or folder of this ``stat``: anyone, or its group, unless
    that group is this user's own private group (named after the user, no other member, no other account's primary
    group: what RHEL-family systems give each user, with umask 002) and no access list (``acl``) names others (with
    one, the group bits are the list's mask)."""
    if st.st_mode & 0o002:
        return True
    if not st.st_mode & 0o020:
        return False
    import grp
    import pwd

    try:
        user, group = pwd.getpwuid(os.getuid()), grp.getgrgid(st.st_gid)
    except KeyError:
        return True
    own = st.st_gid == user.pw_gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}
    return acl or not own or any(p.pw_gid == st.st_gid and p.pw_name != user.pw_name for p in pwd.getpwall())


def _has_acl(where: Path | int) -> bool:
    """Whether a POSIX access list is set on a path (not followed) or an open file."""
    try:
        names = os.listxattr(where) if isinstance(where, int) else os.listxattr(where, follow_symlinks=False)
    except OSError:  # a filesystem without extended attributes: none
        return False
    return "system.posix_acl_access" in names


def _distrust(st: os.stat_result, where: Path | int) -> str | None:
    """Why a file or folder of this ``stat`` (at ``where``, a path or an open file) is not this user's alone, or None."""
    return ("is a symbolic link" if stat.S_ISLNK(st.st_mode)
            else f"belongs to user id {st.st_uid}, not to you ({os.getuid()})" if st.st_uid != os.getuid()
            else f"can be written by other users (mode {stat.S_IMODE(st.st_mode):04o})"
            if _others_may_write(st, _has_acl(where)) else None)


def _refuse(path: Path, why: str) -> Untrusted:
    return Untrusted(f"{path} {why}, so it is not read: a file planted there could run code in this process; "
                     f"remove it (or, where you trust it, `chmod go-w` it) and run the command again.")


def check_trusted(path: Path) -> None:
    """Refuse ``path`` (the Slurm folder, a job's folder, its record or a result pickle) unless this user owns it
    and no one else may write it: unpickling a task's result runs code, and a job record names what to wait on."""
    why = _distrust(path.lstat(), path)
    if why:
        raise _refuse(path, why)


def read_trusted(path: Path) -> bytes:
    """The bytes of ``path``, read through one descriptor that is checked as :func:`check_trusted` checks the path:
    a file swapped in between a check and the read (by anyone who may write a folder above it) is never read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refuse(path, "is a symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        why = _distrust(st, f.fileno()) or (None if stat.S_ISREG(st.st_mode) else "is not a regular file")
        if why:
            raise _refuse(path, why)
        return f.read()


def check_folders_above(folder: Path) -> None:
    """Refuse ``folder`` where a folder above it lets another user put a folder of theirs in its place (one that is
    not root's or this user's, or that others may write without the sticky bit of /tmp): the tasks on the nodes
    read their pickles from ``folder`` by path, after any check here."""
    for above in sorted({*Path(os.path.abspath(folder)).parents, *folder.resolve().parents}):
        try:
            st = above.lstat()
        except FileNotFoundError:  # made by make_private, after this check
            continue
        if st.st_uid not in (0, os.getuid()):
            why = f"belongs to user id {st.st_uid}"
        elif not stat.S_ISLNK(st.st_mode) and _others_may_write(st, _has_acl(above)) and not st.st_mode & stat.S_ISVTX:
            why = f"can be written by other users (mode {stat.S_IMODE(st.st_mode):04o})"
        else:
            continue
        raise Untrusted(f"{above} {why}, so another user could put a folder of theirs in the place of {folder}, "
                        "whose pickles the Slurm tasks run: keep the runs folder where only you can write (`chmod "
                        f"go-w {above}`, or --runs-dir under a folder of your own) and run the command again.")

def make_private(folder: Path) -> Path:
    """``folder`` checked (:func:`check_folders_above`, before anything is made there) and made ``0700``, with the
    folders above it that are missing made ``0755`` less the umask (never group-writable)."""
    check_folders_above(folder)
    for missing in reversed([p for p in folder.parents if not p.exists()]):
        missing.mkdir(mode=0o755, exist_ok=True)
    folder.mkdir(mode=0o700, exist_ok=True)
    check_folders_above(folder)  # again: a folder another user made in the meantime is theirs
    check_trusted(folder)
    return folder
