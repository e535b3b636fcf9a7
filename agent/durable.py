"""Files that survive a crash or a power cut whole: written under a temporary name beside
their own, fsynced, then given their name, and the directory fsynced.

A reader (or the till after a power cut) sees the old file or the new one, never a part;
the temporary file is created exclusively with its final mode, so a private file is never
readable by others, not even while it is written. Temporary names start with a dot and
end in ``.tmp``: the spool and every other reader of these directories ignore them.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["create_file", "fsync_directory", "replace_file"]


def fsync_directory(directory: Path) -> None:
    """Make the names created, renamed or removed in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_file(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Create ``path`` holding ``data``; ``FileExistsError`` if the name is taken (it is
    never overwritten). ``mode`` is masked by the umask, as with ``open``."""
    tmp = _written(path, data, mode)
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def replace_file(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write ``path`` holding ``data``, replacing what was there in one step."""
    tmp = _written(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def _written(path: Path, data: bytes, mode: int) -> Path:
    """A new temporary file beside ``path`` holding ``data``, fsynced."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
