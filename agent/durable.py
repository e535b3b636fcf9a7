"""Files that survive a crash or a power cut whole: written under a temporary name beside
their own, fsynced, then given their name, and the directory fsynced.

A reader (or the till after a power cut) sees the old file or the new one, never a part;
the temporary file is created exclusively with its final mode, so a private file is never
readable by others, not even while it is written. Temporary names start with a dot and
end in ``.tmp``: the spool and every other reader of these directories ignore them.

A name is only ever given to a regular file in place of a regular file: a device, a fifo, a
socket or a directory of that name is refused (``NotRegularFile``, ``IsADirectoryError``)
before anything is written, never renamed over (``-o /dev/null`` must not become a file).

On a file system without hard links (FAT and exFAT: USB sticks) a caller that is the only
one to make names in the directory may have the name given by a rename after a look that it
is free (``sole_writer``); the order stays the same, and a file is never overwritten.

Directories are made the same way (:func:`make_directories`): each new name is fsynced in
its parent, so no power cut loses the path to a file that is recorded as written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from itertools import takewhile
from pathlib import Path
from typing import BinaryIO, TypeVar

__all__ = [
    "NotRegularFile",
    "create_file",
    "create_streamed",
    "device_of",
    "fsync_directory",
    "make_directories",
    "refuse_non_regular",
    "replace_file",
    "temporary_names",
]

_T = TypeVar("_T")
# what os.link says on a file system without hard links: EPERM from vfat, exfat and their
# FUSE drivers, the others from network and FUSE file systems
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})

_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a fifo (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFile(OSError):
    """The name is taken by something that is not a regular file (a device, a fifo...)."""


def refuse_non_regular(path: Path) -> None:
    """Raise if ``path`` exists (after symbolic links) and is not a regular file: a
    directory is ``IsADirectoryError``, anything else ``NotRegularFile`` saying what it is
    (its ``strerror``, e.g. "it is a fifo (named pipe), not a regular file")."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # a new name (or one under a file: creating it will say so)
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    what = next((name for test, name in _KINDS if test(mode)), "a special file")
    raise NotRegularFile(errno.EEXIST, f"it is {what}, not a regular file", str(path))


def fsync_directory(directory: Path) -> None:
    """Make the names created, renamed or removed in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(directory: Path) -> None:
    """Make ``directory`` and its missing parents, each one's name fsynced in its parent
    (``NotADirectoryError`` when a file is in the way)."""
    missing = takewhile(lambda d: not os.path.lexists(d), (directory, *directory.parents))
    for made in reversed(list(missing)):
        made.mkdir()
        fsync_directory(made.parent)


def device_of(path: Path) -> int | None:
    """``st_dev`` of ``path`` or of its nearest existing parent (where it would be made);
    None when that cannot be told (a file in the way, no permission)."""
    for where in (path, *path.parents):
        try:
            return os.stat(where).st_dev
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


def create_file(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Create ``path`` holding ``data``; ``FileExistsError`` if the name is taken (it is
    never overwritten). ``mode`` is masked by the umask, as with ``open``."""
    create_streamed(path, lambda handle: handle.write(data), mode=mode)


def create_streamed(
    path: Path, write: Callable[[BinaryIO], _T], *, mode: int = 0o666, sole_writer: bool = False
) -> _T:
    """:func:`create_file` for content too large to hold in memory: ``write`` writes it to
    the open temporary file; its result is returned once the file has its name.

    A crash can leave the temporary file behind (never a part under ``path``): see
    :func:`temporary_names`.

    Args:
        mode: as with ``open``; a file system without modes (FAT, exFAT) ignores it.
        sole_writer: no other process makes names in ``path``'s directory (the caller's
            lock says so): on a file system without hard links the name is given by a
            rename once it is seen free, instead of failing.
    """
    tmp, result = _written(path, write, mode)
    try:
        _publish(tmp, path, sole_writer, mode)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return result


def _publish(tmp: Path, path: Path, sole_writer: bool, mode: int) -> None:
    """Give ``tmp``'s file the name ``path``, never over a file of that name."""
    try:
        os.link(tmp, path)
    except OSError as exc:
        if not sole_writer or exc.errno not in _NO_HARD_LINKS:
            raise
        # a rename replaces a file: the look before it is only safe because no one else
        # makes a name here between the two (on a case-insensitive medium the look finds
        # the name in another case too, which the rename would replace)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from exc
        os.rename(tmp, path)
        if not mode & 0o222:  # FAT's read-only attribute: set by a chmod, not at creation
            with contextlib.suppress(OSError):  # a driver that keeps no attributes
                os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & ~0o222)
        # Linux's vfat writes the new entry with no cluster and size 0 and leaves them to
        # the file's inode: the directory's fsync alone could leave an empty file named
        _fsync_file(path)


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s data and inode (its size, its clusters) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_names(path: Path) -> list[Path]:
    """The temporary files of ``path`` that writers killed before their end left behind."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def replace_file(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write ``path`` holding ``data``, replacing what was there in one step.

    Raises:
        NotRegularFile, IsADirectoryError: ``path`` names something else than a regular
            file; nothing was written.
    """
    refuse_non_regular(path)
    tmp, _ = _written(path, lambda handle: handle.write(data), mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def _written(path: Path, write: Callable[[BinaryIO], _T], mode: int) -> tuple[Path, _T]:
    """A new temporary file beside ``path`` holding what ``write`` wrote, fsynced; and
    what ``write`` returned."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            result = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, result
