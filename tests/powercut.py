"""A power cut, for the kill tests: what a till's disk holds after it lost its power.

A SIGKILL leaves the operating system's page cache intact: whatever the process wrote
reaches the disk later, synced or not. A power cut keeps only what was synced.
``powercut_shim.c``, preloaded (``LD_PRELOAD``) into the till process, copies a watched
file (the till database, its WAL and its rollback journal) aside after every successful
``fsync``/``fdatasync`` of it, before the call returns: the copies are what the disk holds.
After a SIGKILL, :meth:`PowerCut.cut` puts them in place of the files.

The model: directory entries are durable (a file the process deleted stays deleted, one
it created exists); a file's contents are those of its last sync (nothing for a file
never synced). With ``torn``, some of what was written after the last sync reached the
disk anyway, in any order: each 512-byte sector that differs keeps its new contents with
even odds, and the file keeps its synced or its new length (sectors are written whole, as
SQLite assumes by default). The ``-shm`` index is never kept: SQLite rebuilds it from the
WAL, as after a reboot.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from storage.db import DB_FILE

__all__ = ["PowerCut", "build_shim"]

SHIM_SOURCE = Path(__file__).resolve().parent / "powercut_shim.c"
_WATCHED = (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-journal")
_SECTOR = 512


def build_shim(directory: Path) -> Path:
    """Compile the preload library into ``directory`` with the machine's C compiler."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:  # pragma: no cover - .ci/run installs gcc
        pytest.skip("the power-cut tests build a small C library: apt-get install gcc")
    library = directory / "powercut.so"
    flags = ["-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
    libraries = ["-ldl", "-lpthread"]
    subprocess.run([compiler, *flags, "-o", str(library), str(SHIM_SOURCE), *libraries], check=True)
    return library


class PowerCut:
    """The synced copies of one data directory's database files (in ``kept``)."""

    def __init__(self, shim: Path, data_dir: Path, kept: Path) -> None:
        self.shim, self.data_dir, self.kept = shim, data_dir, kept
        kept.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        """The environment a till process needs (at exec) to keep the synced copies."""
        return {
            "LD_PRELOAD": str(self.shim),
            "POWERCUT_SHADOW": str(self.kept),
            "POWERCUT_WATCH": DB_FILE,
        }

    def cut(self, torn: random.Random | None = None) -> None:
        """Leave the data directory as a power cut would (the process is dead)."""
        for name in _WATCHED:
            path, copy = self.data_dir / name, self.kept / name
            if not path.exists():  # deleted (or never created): so it stays
                copy.unlink(missing_ok=True)
                continue
            synced = copy.read_bytes() if copy.exists() else b""
            if torn is not None:
                synced = _torn(synced, path.read_bytes(), torn)
            path.write_bytes(synced)
        (self.data_dir / f"{DB_FILE}-shm").unlink(missing_ok=True)

    def keep(self) -> None:
        """Take the files as they are as synced (after a clean close by the test)."""
        for name in _WATCHED:
            if (self.data_dir / name).exists():
                shutil.copyfile(self.data_dir / name, self.kept / name)
            else:
                (self.kept / name).unlink(missing_ok=True)


def _torn(synced: bytes, written: bytes, rng: random.Random) -> bytes:
    size = rng.choice((len(synced), len(written)))
    disk = bytearray(synced[:size].ljust(size, b"\0"))
    for start in range(0, min(size, len(written)), _SECTOR):
        new = written[start : start + _SECTOR]
        if new != disk[start : start + len(new)] and rng.random() < 0.5:
            disk[start : start + len(new)] = new
    return bytes(disk)
