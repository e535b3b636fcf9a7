"""Quarterly DEP backups: § 7 Abs 3 RKSV asks for the DEP to be backed up unalterably, at
least quarterly, on an external electronic medium (reference/rksv.md 6).

A register's backup of a quarter is its whole DEP7 export from its first receipt to the
quarter's last day (inclusive, in the register's time zone), taken :data:`QUARTER_GRACE`
after the quarter's end, so each file verifies on its
own with the crypto container. It is streamed (:func:`agent.export.export_dep`) into a
temporary file, fsynced and named read-only (where the file system has modes)
``<dir>/<register>/<register>_<YYYY>-Q<n>.dep.json``, never over a file of that name; then
recorded with its SHA-256 in ``dep_backups`` and a ``dep.backup`` journal event, whose
hash chain makes a changed file evident.

The medium is often a USB stick formatted FAT or exFAT: no hard links (the name is given by
a rename, see :func:`agent.durable.create_streamed`), no ':' in names and (FAT, and Windows
reading it) no final '.': ``<register>`` is :func:`medium_name` of the Kassen-ID. Upper and
lower case are one name there: a backup whose name another register's file has in another
case is refused, never written over that file.

The export reads a snapshot through the reader engine, so receipts are issued while a
backup is written; only the record's commit takes the write connection.

A receipt dated in a quarter after that quarter's backup was written (a clock minutes fast
at midnight, stepped back by NTP after :data:`QUARTER_GRACE`: a receipt is dated no earlier
than the one before it, nothing else) is found by the next run, logged as an ERROR and
journaled (``dep.backup_late``) once, and the whole quarter is backed up again
into ``..._<YYYY>-Q<n>.2.dep.json`` (then ``.3``...), recorded as quarter ``<YYYY>-Q<n>.2``:
the medium holds every receipt of the quarter, the first file stays as it is.

A crash after the file got its name and before its record leaves a complete file: the
next run exports again into a digest only and records the file if it is that export byte
for byte (the DEP of an ended quarter does not change); another file there is refused, and
not compared again until it changes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path
from typing import IO, BinaryIO, TypeAlias, cast

from agent.at_rksv import is_register_id
from agent.backup_schedule import (
    OVERDUE_DAYS,
    QUARTER_GRACE,
    BackupFailure,
    BackupRecord,
    BackupStatus,
    DueRun,
    LateReceipt,
    Quarter,
    ScheduledRegister,
    backup_statuses,
    by_register,
    check_quarter,
    late_receipts,
    list_backups,
    medium_name,
    scheduled_registers,
)
from agent.clock import Clock
from agent.durable import (
    create_streamed,
    device_of,
    fsync_directory,
    make_directories,
    refuse_non_regular,
    temporary_names,
)
from agent.errors import BackupFailed, NotFound
from agent.export import export_dep
from storage.db import TillDB
from storage.journal import append_event

__all__ = [
    "OVERDUE_DAYS",
    "QUARTER_GRACE",
    "BackupFailure",
    "BackupRecord",
    "BackupStatus",
    "DepBackups",
    "DueRun",
    "Quarter",
    "backup_statuses",
    "list_backups",
    "medium_name",
]

log = logging.getLogger(__name__)

_Identity: TypeAlias = tuple[int, int, int, int, int]  # a file's device, inode, size, times
# whether a late receipt's supplement was journaled already: through ix_journal_backup_late
# (0009), only these events, never the whole journal
_LATE_SAID = (
    "SELECT 1 FROM journal WHERE kind = 'dep.backup_late' AND register_id = ?"
    " AND json_extract(data, '$.backup') = ? AND json_extract(data, '$.last_number') = ?"
)


class _Digest(io.RawIOBase):
    """A binary sink that hashes what it passes on to ``target`` (if any), and gives up
    when the service stops."""

    def __init__(self, target: BinaryIO | None, stop: threading.Event) -> None:
        super().__init__()
        self.target, self.stop = target, stop
        self.sha256 = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.stop.is_set():
            raise _Stopped
        self.sha256.update(data)
        if self.target is not None:
            self.target.write(data)
        return len(data)


class _Stopped(Exception):
    """The service stops: the backup in progress is abandoned (its temporary file too)."""


class DepBackups:
    """Writes the quarterly backups of the registers of one till database into ``directory``.

    Args:
        db: the open till database (this process holds the writer lock).
        directory: ``[backup] dir``; a register's files go into a directory of its own.
        clock: wall time: which quarters are over, and the records' times.
    """

    def __init__(
        self, db: TillDB, directory: Path, clock: Clock, *, data_dir: Path | None = None
    ) -> None:
        self.db = db
        self.directory = directory
        self.clock = clock
        # [backup] dir on another file system than ``data_dir`` now: an external medium. A
        # backup is refused while the directory is on the data directory's file system, or
        # on the one under the medium's mount point (an unmounted medium leaves the empty
        # mount point, or no directory, there). Not pinned to the medium's device number: a
        # stick put back as sdc instead of sdb, a FUSE or network share get a new one.
        self._data_dir = data_dir
        here = device_of(directory)
        data = None if data_dir is None else device_of(data_dir)
        self._external = data_dir is not None and here is not None and here != data
        self._beneath = _under_mount_point(directory) if self._external else None
        self.failures: dict[str, BackupFailure] = {}
        self._refused: dict[Path, _Identity] = {}  # foreign files under a backup's name
        self._late_said: set[tuple[str, str]] = set()  # (register, supplement) logged
        self._stop = threading.Event()

    @property
    def external(self) -> bool:
        """Whether ``directory`` was on another file system than the data directory at
        start (§ 7 Abs 3: an external medium); False: the backups land on the till's disk."""
        return self._external

    def stop(self) -> None:
        """Abandon a backup being written (the service stops); the next start redoes it."""
        self._stop.set()

    def run_due(self, register_id: str | None = None) -> list[BackupRecord]:
        """Write every backup that is due, per register oldest first (see :meth:`attempt_due`).

        Raises:
            BackupFailed: the first failure, after every register had its turn.
        """
        run = self.attempt_due(register_id)
        if run.failures:
            raise run.failures[0]
        return run.written

    def attempt_due(self, register_id: str | None = None) -> DueRun:
        """Write every backup that is due, per register oldest first; return what was
        written and what failed (each failure is recorded, as by :meth:`run_due`).

        A register whose backup fails waits for the next run (its later quarters behind
        it); the other registers go on. A quarter backed up already that has a receipt
        dated in it after its backup was written (the clock was stepped back) is said once
        (an ERROR, a ``dep.backup_late`` event) and backed up again, whole, as
        ``<quarter>.2`` (then ``.3``...), before the due quarters, once the clock has
        passed the quarter's end again (:data:`QUARTER_GRACE` after it).
        """
        written: list[BackupRecord] = []
        failed: list[BackupFailed] = []
        now = self.clock.now()
        with self.db.read_connection() as conn:
            records = by_register(list_backups(conn, register_id))
            registers = scheduled_registers(conn, register_id)
            # a supplement waits until its quarter is over again by the clock: while the
            # clock is back in it, more receipts may be dated in it (one file, not one a run)
            late = {
                reg.id: [
                    item
                    for item in late_receipts(conn, reg.id, records.get(reg.id, []))
                    if item.quarter <= reg.last_due(now)
                ]
                for reg in registers
            }
        plan = [(reg, reg.due(records.get(reg.id, []), now)) for reg in registers]
        for reg, quarters in plan:
            try:
                for item in late[reg.id]:
                    self._say_late(reg, item)
                    written.append(self._back_up(reg, item.quarter, item.label))
                for quarter in quarters:
                    written.append(self._back_up(reg, quarter))
            except BackupFailed as exc:
                self._failed(exc)
                failed.append(exc)
            except _Stopped:
                break
        return DueRun(written, failed)

    def run_quarter(self, register_id: str, quarter: Quarter) -> tuple[BackupRecord, bool]:
        """The backup of one quarter that is over; written now unless it exists (False).

        Raises:
            NotFound: no such register.
            InvalidSale: the quarter (field ``quarter``) is not over, is before the register's
                first receipt or after its Schlussbeleg.
            BackupFailed: it could not be written.
        """
        with self.db.read_connection() as conn:
            reg = next(iter(scheduled_registers(conn, register_id)), None)
            if reg is None:
                raise NotFound(f"register {register_id!r} is not initialized in this till database")
            check_quarter(reg, quarter, self.clock.now())
            records = list_backups(conn, register_id)
        if existing := next((r for r in records if r.quarter == str(quarter)), None):
            return existing, False
        try:
            return self._back_up(reg, quarter), True
        except BackupFailed as exc:
            self._failed(exc)
            raise

    def _back_up(self, reg: ScheduledRegister, quarter: Quarter, label: str = "") -> BackupRecord:
        """Write and record ``quarter``'s backup, named ``label`` (a supplement's, e.g.
        ``2026-Q1.2``), by default the quarter's own."""
        label = label or str(quarter)
        if (refusal := self._refusal(reg)) is not None:
            raise BackupFailed(reg.id, label, refusal)
        path = self._path(reg, label)
        try:
            # a record must not outlive the path to its file in a power cut
            make_directories(path.parent)
            for stale in temporary_names(path):  # left by a writer killed before its end
                stale.unlink()
            if os.path.lexists(path):
                _refuse_other_case(path)
                sha256, count = self._adopt(reg, quarter, path)
            else:
                # sole writer: this process holds the data directory's lock, and only it
                # backs up its registers (a rename may stand in for a link: FAT, exFAT)
                sha256, count = create_streamed(
                    path,
                    lambda handle: self._export(reg, quarter, handle),
                    mode=0o444,
                    sole_writer=True,
                )
        except OSError as exc:
            reason = f"cannot write {path}: {_reason(exc, path)}"
            raise BackupFailed(reg.id, label, reason) from exc
        if self._off_medium(path):
            # the medium went away after the look above: what was written is on the
            # till's own disk (under the empty mount point), never recorded as the backup
            reason = f"{path} was written but is not on the external disk (was the medium removed?)"
            raise BackupFailed(reg.id, label, reason)
        return self._record(reg, label, path, sha256, count)

    def _say_late(self, reg: ScheduledRegister, item: LateReceipt) -> None:
        """Log and journal, once, a receipt dated in a quarter after its backup."""
        if (reg.id, item.label) in self._late_said:
            return
        log.error(
            "register %s: receipt %d (and any after it dated in %s) is dated in %s after its"
            " backup %s, up to receipt %d, was written (was the clock stepped back?); the"
            " quarter is backed up again as %s",
            reg.id,
            item.late,
            item.quarter,
            item.quarter,
            item.backup,
            item.last_number,
            item.label,
        )
        facts = {
            "quarter": str(item.quarter),
            "backup": item.backup,
            "last_number": item.last_number,
            "late": item.late,
        }
        at = self.clock.now().isoformat()
        with self.db.write_connection().transaction() as conn:
            # journaled once per supplement, also across restarts while it is unwritten
            said = conn.execute(_LATE_SAID, (reg.id, item.backup, item.last_number)).fetchone()
            if said is None:
                append_event(conn, kind="dep.backup_late", register_id=reg.id, data=facts, at=at)
        self._late_said.add((reg.id, item.label))

    def _path(self, reg: ScheduledRegister, label: str) -> Path:
        """``<dir>/<name>/<name>_<label>.dep.json`` (the label: the quarter, or a
        supplement's ``2026-Q1.2``): the name is :func:`medium_name` of
        the Kassen-ID, or the Kassen-ID itself where a directory of that name holds the
        register's earlier backups (written on a Linux file system before names were
        mapped), so they stay together and a file left there without a record is found."""
        name = medium_name(reg.id)
        if name != reg.id and _has_directory(self.directory, reg.id):
            name = reg.id
        return self.directory / name / f"{name}_{label}.dep.json"

    def _refusal(self, reg: ScheduledRegister) -> str | None:
        """Why nothing may be written for ``reg`` now, or None."""
        if not is_register_id(reg.id):  # an earlier init let "..": never beside [backup] dir
            return f"the Kassen-ID {reg.id!r} cannot name a backup directory"
        if self._off_medium(self.directory):
            return (
                f"{self.directory} is not on an external disk, as it was at start"
                " (is the medium mounted?); nothing is written to the till's own disk"
            )
        return None

    def _off_medium(self, path: Path) -> bool:
        """[backup] dir was on an external disk at start, and ``path`` now leads to the
        data directory's file system, or to the one under the medium's mount point (an
        unmounted medium leaves its empty mount point there), or where cannot be told."""
        if not self._external or self._data_dir is None:
            return False
        here = device_of(path)
        return here is None or here in (device_of(self._data_dir), self._beneath)

    def _export(
        self, reg: ScheduledRegister, quarter: Quarter, out: BinaryIO | None
    ) -> tuple[str, int]:
        sink = _Digest(out, self._stop)
        count = export_dep(self.db, reg.id, cast("IO[bytes]", sink), end=quarter.last_day)
        return sink.sha256.hexdigest(), count

    def _adopt(self, reg: ScheduledRegister, quarter: Quarter, path: Path) -> tuple[str, int]:
        """A file of this name without a record: a run killed before its record. It is
        recorded if it is this quarter's export; it is never overwritten (nor read when it
        is no regular file: a fifo would block the job).

        A refused file is not compared again (a whole export) while it stays as it was:
        the same inode, size and times (the DEP of an ended quarter does not change)."""
        refuse_non_regular(path)
        seen = _identity(path)  # before reading: a change while it is read is seen later
        if self._refused.get(path) != seen:
            sha256, count = self._export(reg, quarter, None)
            with path.open("rb") as handle:
                if hashlib.file_digest(handle, "sha256").hexdigest() == sha256:
                    # the run that wrote it may have died before its name was durable
                    os.fsync(handle.fileno())
                    fsync_directory(path.parent)
                    return sha256, count
            self._refused[path] = seen
        raise FileExistsError(
            errno.EEXIST,
            "the name is taken by a file that is not this quarter's DEP export (move it away)",
        )

    def _record(
        self, reg: ScheduledRegister, label: str, path: Path, sha256: str, count: int
    ) -> BackupRecord:
        at = self.clock.now().isoformat()
        with self.db.write_connection().transaction() as conn:
            last = _last_exported(conn, reg.id, count)
            record = BackupRecord(reg.id, label, str(path), sha256, count, last, at)
            conn.execute(
                "INSERT INTO dep_backups (register_id, quarter, path, sha256, receipts,"
                " last_number, written_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                tuple(asdict(record).values()),
            )
            facts = {k: v for k, v in asdict(record).items() if k != "register"}
            append_event(conn, kind="dep.backup", register_id=reg.id, data=facts, at=at)
        self.failures.pop(reg.id, None)
        log.info("register %s: DEP backup of %s written to %s", reg.id, label, path)
        return record

    def _failed(self, exc: BackupFailed) -> None:
        """Journal the first failure of a run of failures (the log is the caller's)."""
        at = self.clock.now().isoformat()
        first = exc.register_id not in self.failures
        if first:
            facts = {"quarter": exc.quarter, "error": exc.reason}
            with self.db.write_connection().transaction() as conn:
                append_event(
                    conn, kind="dep.backup_failed", register_id=exc.register_id, data=facts, at=at
                )
        self.failures[exc.register_id] = BackupFailure(exc.quarter, exc.reason, at)


def _last_exported(conn: sqlite3.Connection, register_id: str, count: int) -> int:
    """The number of the last receipt in an export from the first receipt that held
    ``count``: the ``count``-th by number (a receipt's date is never before the one before
    it, so an export up to a day is the receipts up to a number). Not the latest receipt
    up to that day now: one committed after the export's snapshot is not in the file."""
    row = conn.execute(
        "SELECT number FROM receipts WHERE register_id = ? ORDER BY number LIMIT 1 OFFSET ?",
        (register_id, max(count - 1, 0)),
    ).fetchone()
    return 0 if row is None or count == 0 else int(row[0])


def _under_mount_point(directory: Path) -> int | None:
    """``st_dev`` of the file system holding the mount point of the one ``directory`` (or
    its nearest existing parent) is on; None for the root or when it cannot be told."""
    try:
        path = next(p for p in (directory.resolve(), *directory.resolve().parents) if p.exists())
        device = os.stat(path).st_dev
        while path.parent != path and os.stat(path.parent).st_dev == device:
            path = path.parent
        return None if path.parent == path else os.stat(path.parent).st_dev
    except (OSError, StopIteration):
        return None


def _has_directory(directory: Path, name: str) -> bool:
    """Whether ``directory`` holds a directory of exactly this name (FAT finds 'K1.' when
    'K1' is there, and ignores case)."""
    try:
        return name in os.listdir(directory) and (directory / name).is_dir()
    except OSError:
        return False


def _refuse_other_case(path: Path) -> None:
    """A medium that ignores case (FAT, exFAT) finds ``path`` when another name differing
    only in case is there: another register's file, not compared (nor read), refused."""
    names = os.listdir(path.parent)
    if path.name in names:
        return
    other = next((n for n in names if n.casefold() == path.name.casefold()), "another file")
    raise FileExistsError(
        errno.EEXIST,
        f"the medium does not tell upper from lower case, and the name is taken by {other}"
        " (registers whose Kassen-IDs differ only in case need a medium that does, e.g. ext4)",
    )


def _identity(path: Path) -> _Identity:
    """What changes when a file is changed, or replaced by another."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _reason(exc: OSError, path: Path) -> str:
    """The cause in words ("permission denied", "no space left on device"), after the path
    the error names when that is a directory on the way to ``path`` (one that cannot be
    made); not when it is ``path`` or its temporary file beside it (named already)."""
    reason = exc.strerror or str(exc)
    reason = reason[:1].lower() + reason[1:]
    if exc.filename is None or Path(exc.filename).parent == path.parent:
        return reason
    return f"{exc.filename}: {reason}"
