"""A real, small file system for the tests of a full disk: a tmpfs of a few MiB.

Mounting needs root (CI runs as root); elsewhere the test is skipped, saying why.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"4m"``) mounted at ``where/fs``, unmounted on exit (lazily
    when something still holds it open, as a database closed after the test does)."""
    mount = where / "fs"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_up(mount: Path) -> Path:
    """Write zeros until the file system at ``mount`` has no byte left; the file that
    holds them (remove it to give the room back)."""
    filler = mount / "fill"
    with filler.open("wb", buffering=0) as out:
        for chunk in (65536, 512):  # big writes, then the last scraps
            try:
                while True:
                    out.write(b"\0" * chunk)
            except OSError:
                pass
    assert os.statvfs(mount).f_bavail == 0
    return filler


def fill_up_after_checkpoint(conn: sqlite3.Connection, mount: Path) -> Path:
    """An empty WAL on ``conn``'s database (its next write needs a new block), then
    :func:`fill_up`."""
    assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    return fill_up(mount)
