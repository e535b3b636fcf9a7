"""The files of ``till-agent restore`` (agent.restore): the data directory's writer lock
held and given to its owner, the backup copied and hashed, the current database's files
moved aside into a ``replaced-`` directory; each step fsynced where it must survive a
power cut."""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from agent.durable import fsync_directory
from agent.errors import DataDirLocked, StorageError
from agent.restore_pending import SIDE_FILES
from storage.db import DB_FILE, LOCK_FILE

__all__ = [
    "copy_backup",
    "digest",
    "fsync_file",
    "locked",
    "move_aside",
    "reason",
    "replaced_name",
    "till_files",
]

_CHUNK = 1 << 20


@contextmanager
def locked(data_dir: Path) -> Iterator[tuple[tuple[int, int], bool]]:
    """The data directory's writer lock (the one `run` takes) held; yields the directory's
    (uid, gid), which the restored files get, and whether this made the directory."""
    created = not data_dir.exists()
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = data_dir.stat()
    except OSError as exc:
        raise StorageError(f"cannot use the data directory {data_dir}: {reason(exc)}") from exc
    if not data_dir.is_dir():
        raise StorageError(f"the data directory {data_dir} is not a directory")
    owner = (found.st_uid, found.st_gid)
    fd = -1
    try:
        _may_give(owner, data_dir)
        fd = _lock(data_dir, owner)
        yield owner, created
    except BaseException:
        if created:  # a refused restore leaves no directory it made
            (data_dir / LOCK_FILE).unlink(missing_ok=True)
            with suppress(OSError):
                data_dir.rmdir()
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _may_give(owner: tuple[int, int], data_dir: Path) -> None:
    """Refuse a user who cannot give the restored database to the data directory's owner:
    a file of root's (or of anyone else's) is read-only to the service."""
    if os.geteuid() not in (0, owner[0]):
        raise StorageError(
            f"the data directory {data_dir} belongs to uid {owner[0]}: restore as that user"
            " (`runuser -u till-agent -- ...`) or as root, so the restored database is the"
            " service's; nothing was changed"
        )


def _lock(data_dir: Path, owner: tuple[int, int]) -> int:
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise DataDirLocked(
            f"another till-agent process is writing to {data_dir} (lock {LOCK_FILE}): stop"
            " the service first (`systemctl stop till-agent`); nothing was changed"
        ) from exc
    try:
        _give(fd, owner)  # a lock file root made here would keep the service out
    except OSError:
        os.close(fd)
        raise
    return fd


def _give(fd: int, owner: tuple[int, int]) -> None:
    found = os.fstat(fd)
    if (found.st_uid, found.st_gid) != owner:
        os.fchown(fd, *owner)


def copy_backup(backup: Path, tmp: Path, owner: tuple[int, int]) -> tuple[str, int]:
    """Copy the backup to ``tmp`` (0600, the data directory's owner), fsynced; its SHA-256
    and size."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as target:
        _give(target.fileno(), owner)
        found = digest(backup, target.write)
        target.flush()
        os.fsync(target.fileno())
    return found


def digest(backup: Path, also: Callable[[bytes], object] = lambda _: None) -> tuple[str, int]:
    """The backup's SHA-256 and size, each chunk given to ``also`` on the way."""
    hashed, size = hashlib.sha256(), 0
    with backup.open("rb") as source:
        while chunk := source.read(_CHUNK):
            hashed.update(chunk)
            also(chunk)
            size += len(chunk)
    return hashed.hexdigest(), size


def till_files(data_dir: Path) -> list[Path]:
    """The current database's files, its -wal, -shm and -journal first."""
    names = [f"{DB_FILE}{s}" for s in (*SIDE_FILES, "")]
    return [data_dir / n for n in names if os.path.lexists(data_dir / n)]


def replaced_name(data_dir: Path, now: dt.datetime) -> Path:
    base = f"replaced-{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}"
    candidates = (data_dir / (base if n == 1 else f"{base}-{n}") for n in range(1, 1000))
    return next(p for p in candidates if not os.path.lexists(p))


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_aside(data_dir: Path, replaced: Path, owner: tuple[int, int]) -> None:
    """Move the current database's files that are still in ``data_dir`` into ``replaced``
    (-wal, -shm and -journal before the database: a -wal left beside the restored file
    would be replayed into it), made if need be; none is ever written over."""
    files = till_files(data_dir)
    if not files:
        return
    if not replaced.is_dir():
        replaced.mkdir(mode=0o700)
        fd = os.open(replaced, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _give(fd, owner)
        finally:
            os.close(fd)
        fsync_directory(data_dir)  # the directory's name before the files go into it
    for path in files:
        if os.path.lexists(replaced / path.name):
            raise StorageError(
                f"{path.name} is both in {data_dir} and in {replaced}: which one is the till's"
                " cannot be told here; nothing more was moved"
            )
        os.rename(path, replaced / path.name)
    fsync_directory(replaced)
    fsync_directory(data_dir)


def reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({exc.strerror})"
    return exc.strerror or str(exc)
