"""``till-agent restore``: put a backup of the till database back without ever giving a
receipt number twice.

The numbers after a backup's last receipt may be on customers' paper: a till restored
from an older backup would sign new, different receipts under them (a Belegnummer is
unique per Kassen-ID, rksv.md 1 field 3), and the DEP would lose the printed ones. So,
holding the data directory's writer lock (no service runs meanwhile):

1. the backup is copied to a temporary file in the data directory, hashed on the way, and
   the copy checked (:class:`agent.restore_check.BackupCopy`): integrity, the journal's
   hash chain, a schema revision of ours (an older one is migrated at the next start);
2. the till database there, if it can be read (its WAL included), must not be ahead of the
   backup for any register (:class:`BackupBehind`), and each register's last receipt must
   be the backup's receipt of that number; without a readable one (a dead disk, a new
   machine), or with one of another till, the operator confirms that the backup's last
   receipts are the last ones printed (:class:`ConfirmationNeeded`);
3. in the copy, one transaction marks the print jobs the backup still had open (and its
   receipts without a job yet) ``skipped``, as the till the backup comes from printed them
   or was about to (a reprint prints a KOPIE), and journals ``till.restored``;
4. the current database's files (-wal, -shm, -journal first) are moved into
   ``replaced-<UTC time>/``, never deleted; then the copy, fsynced, mode 0600 and owned as
   the data directory, becomes ``till.sqlite3`` and the directory is fsynced.

A refusal leaves the data directory as it was, but for the lock file every command that may
write takes (a data directory this made is removed again).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.durable import fsync_directory
from agent.errors import DataDirLocked, InvalidSale, NotFound, StorageError
from agent.restore_check import (
    BackupBehind,
    BackupCopy,
    ConfirmationNeeded,
    CurrentTill,
    LastReceipt,
    compare,
    read_current,
)
from agent.restore_prints import SkippedPrints, skip_open_prints
from storage.db import DB_FILE, LOCK_FILE
from storage.journal import append_event
from storage.migrate import head_revision

__all__ = ["BackupBehind", "ConfirmationNeeded", "Restored", "restore"]

log = logging.getLogger(__name__)

EVENT = "till.restored"
_SIDE_FILES = ("-wal", "-shm", "-journal")  # moved before the database itself
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore did."""

    backup: Path
    sha256: str
    size: int
    revision: str
    database: Path
    registers: tuple[LastReceipt, ...]
    replaced: Path | None  # where the replaced files are (None: there were none)
    current: CurrentTill
    skipped: SkippedPrints
    journal_seq: int
    created_data_dir: bool
    confirmed_by_operator: bool  # --yes stood in for a current database of this till

    @property
    def migrates_on_start(self) -> bool:
        return self.revision != head_revision()

    @property
    def events_left_behind(self) -> tuple[int, int] | None:
        """The replaced database's journal events after the backup's last one (outage,
        check and printer events: the receipts were compared), first and last; they are
        only in the ``replaced-`` directory."""
        first, last = self.journal_seq, self.current.journal_seq  # ours took the first's seq
        return (first, last) if self.current.readable and last >= first else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup": {"path": str(self.backup), "sha256": self.sha256, "size": self.size},
            "database": str(self.database),
            "schema_revision": self.revision,
            "migrates_on_start": self.migrates_on_start,
            "registers": [r.as_dict() for r in self.registers],
            "replaced": None if self.replaced is None else str(self.replaced),
            "replaced_last_numbers": _numbers(self.current),
            "replaced_unreadable": self.current.problem,
            "replaced_events_left_behind": self.events_left_behind,
            "skipped_prints": self.skipped.as_list(),
            "journal_seq": self.journal_seq,
            "created_data_dir": self.created_data_dir,
            "confirmed_by_operator": self.confirmed_by_operator,
        }


def restore(backup: Path, data_dir: Path, *, confirmed: bool, now: dt.datetime) -> Restored:
    """Restore ``backup`` into ``data_dir`` (see the module's docstring).

    Args:
        confirmed: the operator checked the backup's last receipts against the last ones
            printed (``--yes``); needed only when the data directory holds no readable
            database of this till.
        now: the time of the journal event and of the ``replaced-`` directory's name.

    Raises:
        NotFound: no backup file there.
        InvalidSale: the backup is no regular file, is the till database itself, or has a
            -wal beside it (a copy of an open database); :class:`ConfirmationNeeded`.
        DataDirLocked: a service (or a command) holds the data directory.
        StorageError: the backup is refused (damaged, ...) or the data directory cannot be
            used (no permission, full disk).
        BackupBehind: see there.
    """
    _check_source(backup, data_dir)
    with _locked(data_dir) as (owner, created):
        tmp = data_dir / f".{DB_FILE}.{secrets.token_hex(6)}.tmp"
        try:
            return _restore(backup, tmp, data_dir, owner, confirmed, now, created)
        except OSError as exc:
            raise StorageError(f"cannot restore {backup} into {data_dir}: {_reason(exc)}") from exc
        finally:
            for leftover in (tmp, *(Path(f"{tmp}{s}") for s in _SIDE_FILES)):
                leftover.unlink(missing_ok=True)  # the copy is renamed by then when it worked


def _restore(  # noqa: PLR0917 - one restore's values, passed on once
    backup: Path,
    tmp: Path,
    data_dir: Path,
    owner: tuple[int, int],
    confirmed: bool,
    now: dt.datetime,
    created: bool,
) -> Restored:
    sha256, size = _copy(backup, tmp, owner)
    copy = BackupCopy(tmp, backup)
    with copy.opened():
        revision = copy.check()
        last, _ = copy.last_receipts()
        current = read_current(data_dir / DB_FILE)
        vouched = compare(copy, last, current, data_dir, confirmed)
    replaced = _replaced_name(data_dir, now) if _till_files(data_dir) else None
    event = {
        "backup": {"file": backup.name, "path": str(backup), "sha256": sha256, "size": size},
        "schema_revision": revision,
        "last_numbers": {r.register: r.number for r in last},
        "replaced": None if replaced is None else replaced.name,
        "replaced_last_numbers": _numbers(current),
        "replaced_journal_seq": current.journal_seq if current.readable else None,
        "confirmed_by_operator": not vouched,
    }
    skipped, seq = _record(tmp, event, now)
    _fsync(tmp)
    _move_aside(data_dir, replaced, owner)
    os.rename(tmp, data_dir / DB_FILE)
    fsync_directory(data_dir)
    if skipped:
        log.warning("restore: print jobs skipped (reprint prints a KOPIE): %s", skipped.shown())
    return Restored(
        backup=backup,
        sha256=sha256,
        size=size,
        revision=revision,
        database=data_dir / DB_FILE,
        registers=tuple(last),
        replaced=replaced,
        current=current,
        skipped=skipped,
        journal_seq=seq,
        created_data_dir=created,
        confirmed_by_operator=not vouched,
    )


def _check_source(backup: Path, data_dir: Path) -> None:
    try:
        found = backup.stat()
    except FileNotFoundError as exc:
        raise NotFound(f"no backup file {backup}") from exc
    except OSError as exc:
        raise StorageError(f"cannot read the backup {backup}: {_reason(exc)}") from exc
    if not backup.is_file():
        raise InvalidSale("BACKUP_FILE", "not-a-file", f"{backup} is not a regular file")
    with suppress(OSError):
        if os.path.samestat(found, (data_dir / DB_FILE).stat()):
            raise InvalidSale(
                "BACKUP_FILE", "is-the-database", f"{backup} is the till database itself"
            )
    wal = Path(f"{backup}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise InvalidSale(
            "BACKUP_FILE",
            "wal-beside",
            f"{wal} lies beside {backup}: it is a copy of a database that was open, whose"
            " last transactions are in that -wal file, not a backup. Make one with"
            ' `sqlite3 DATABASE ".backup FILE"` (README.md, Operations, Backup)',
        )


@contextmanager
def _locked(data_dir: Path) -> Iterator[tuple[tuple[int, int], bool]]:
    """The data directory's writer lock (the one `run` takes) held; yields the directory's
    (uid, gid), which the restored files get, and whether this made the directory."""
    created = not data_dir.exists()
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = data_dir.stat()
    except OSError as exc:
        raise StorageError(f"cannot use the data directory {data_dir}: {_reason(exc)}") from exc
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


def _copy(backup: Path, tmp: Path, owner: tuple[int, int]) -> tuple[str, int]:
    """Copy the backup to ``tmp`` (0600, the data directory's owner), fsynced; its SHA-256
    and size."""
    digest, size = hashlib.sha256(), 0
    with backup.open("rb") as source:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as target:
            _give(target.fileno(), owner)
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                target.write(chunk)
                size += len(chunk)
            target.flush()
            os.fsync(target.fileno())
    return digest.hexdigest(), size


def _numbers(current: CurrentTill) -> dict[str, int] | None:
    return {r.register: r.number for r in current.last} if current.readable else None


def _till_files(data_dir: Path) -> list[Path]:
    """The current database's files, its -wal, -shm and -journal first."""
    names = [f"{DB_FILE}{s}" for s in (*_SIDE_FILES, "")]
    return [data_dir / n for n in names if os.path.lexists(data_dir / n)]


def _replaced_name(data_dir: Path, now: dt.datetime) -> Path:
    base = f"replaced-{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}"
    candidates = (data_dir / (base if n == 1 else f"{base}-{n}") for n in range(1, 1000))
    return next(p for p in candidates if not os.path.lexists(p))


def _record(tmp: Path, event: dict[str, Any], now: dt.datetime) -> tuple[SkippedPrints, int]:
    """In the copy, one transaction: the open print jobs skipped, ``till.restored``
    journaled. The copy leaves WAL mode here (its -wal would be a file of the temporary
    name); the service turns it on again when it opens the database."""
    at = now.astimezone(dt.UTC).isoformat()
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        skipped = skip_open_prints(conn, at)
        event["skipped_prints"] = skipped.as_list()
        seq = append_event(conn, kind=EVENT, register_id=None, data=event, at=at)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot record the restore in the copy {tmp}: {exc}") from exc
    finally:
        conn.close()
    return skipped, seq


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_aside(data_dir: Path, replaced: Path | None, owner: tuple[int, int]) -> None:
    """Move the current database's files into ``replaced`` (-wal, -shm and -journal before
    the database: a -wal left beside the restored file would be replayed into it)."""
    if replaced is None:
        return
    replaced.mkdir(mode=0o700)
    fd = os.open(replaced, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _give(fd, owner)
    finally:
        os.close(fd)
    for path in _till_files(data_dir):
        os.rename(path, replaced / path.name)
    fsync_directory(replaced)
    fsync_directory(data_dir)


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({exc.strerror})"
    return exc.strerror or str(exc)
