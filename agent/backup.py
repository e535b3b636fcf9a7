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
journaled (``dep.backup_late``) once per process, and the whole quarter is backed up again
into ``..._<YYYY>-Q<n>.2.dep.json`` (then ``.3``...), recorded as quarter ``<YYYY>-Q<n>.2``:
the medium holds every receipt of the quarter, the first file stays as it is.

A crash after the file got its name and before its record leaves a complete file: the
next run exports again into a digest only and records the file if it is that export byte
for byte (the DEP of an ended quarter does not change); another file there is refused, and
not compared again until it changes.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import logging
import os
import re
import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, BinaryIO, TypeAlias, cast
from zoneinfo import ZoneInfo

from agent.at_rksv import is_register_id
from agent.clock import Clock
from agent.durable import (
    create_streamed,
    device_of,
    fsync_directory,
    make_directories,
    refuse_non_regular,
    temporary_names,
)
from agent.errors import BackupFailed, InvalidSale, NotFound
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

OVERDUE_DAYS = 7  # an ended quarter without a backup for longer than this is overdue
# A quarter is backed up this long after its end, not at midnight: a sale stamped 23:59:59
# commits after its signature (the sign deadline, sign_timeout_s, is 60 s at most) and must
# be in the file. Also covers a clock a few minutes fast that NTP steps back after midnight.
QUARTER_GRACE = dt.timedelta(minutes=5)
# [0-9], not \d (other scripts' digits), and fullmatch, not $ (which allows a final newline)
_QUARTER = re.compile(r"([0-9]{4})-Q([1-4])")
_REGISTERS = (
    "SELECT r.id, r.timezone, r.state, r.last_issued_at,"
    " (SELECT issued_at FROM receipts WHERE register_id = r.id ORDER BY number LIMIT 1)"
    " FROM registers r WHERE ? IS NULL OR r.id = ? ORDER BY r.id"
)
_RECORDS = (
    "SELECT register_id, quarter, path, sha256, receipts, last_number, written_at"
    " FROM dep_backups WHERE ? IS NULL OR register_id = ? ORDER BY register_id, quarter"
)
_NEXT_RECEIPT = (
    "SELECT number, issued_at FROM receipts WHERE register_id = ? AND number > ?"
    " ORDER BY number LIMIT 1"
)
_Identity: TypeAlias = tuple[int, int, int, int, int]  # a file's device, inode, size, times


@dataclass(frozen=True, order=True, slots=True)
class Quarter:
    """A calendar quarter, written ``2026-Q3``."""

    year: int
    number: int

    @classmethod
    def parse(cls, text: str) -> Quarter:
        """``ValueError`` unless ``text`` is of the form 2026-Q3."""
        if (match := _QUARTER.fullmatch(text)) is None:
            raise ValueError(f"{text!r} is not a quarter: write it as YYYY-Qn, e.g. 2026-Q3")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def of(cls, day: dt.date) -> Quarter:
        return cls(day.year, (day.month - 1) // 3 + 1)

    def next(self) -> Quarter:
        return Quarter(self.year + self.number // 4, self.number % 4 + 1)

    def previous(self) -> Quarter:
        return Quarter(self.year - (self.number == 1), (self.number - 2) % 4 + 1)

    @property
    def first_day(self) -> dt.date:
        return dt.date(self.year, 3 * self.number - 2, 1)

    @property
    def last_day(self) -> dt.date:
        return self.next().first_day - dt.timedelta(days=1)

    def ends_at(self, zone: dt.tzinfo) -> dt.datetime:
        """Midnight at the start of the next quarter, local time of ``zone``."""
        return dt.datetime.combine(self.next().first_day, dt.time(), tzinfo=zone)

    def __str__(self) -> str:
        return f"{self.year:04d}-Q{self.number}"


@dataclass(frozen=True, slots=True)
class BackupRecord:
    """A written backup, as ``dep_backups`` and its ``dep.backup`` event hold it."""

    register: str
    quarter: str  # 2026-Q1, or 2026-Q1.2 for a supplement (late receipts of 2026-Q1)
    path: str
    sha256: str
    receipts: int
    last_number: int
    written_at: str


@dataclass(frozen=True, slots=True)
class DueRun:
    """One run over the due backups: those written, then the failures, by register."""

    written: list[BackupRecord]
    failures: list[BackupFailed]


@dataclass(frozen=True, slots=True)
class BackupFailure:
    """The current run of failures of a register's backups: the latest one."""

    quarter: str
    error: str
    at: str


@dataclass(frozen=True, slots=True)
class BackupStatus:
    """What ``GET /v1/status`` shows of a register's backups."""

    last: BackupRecord | None
    overdue: bool
    failure: BackupFailure | None


@dataclass(frozen=True, slots=True)
class _Late:
    """A receipt dated in ``quarter`` after its latest backup (``backup``, up to receipt
    ``last_number``) was written: the clock was stepped back after that backup."""

    quarter: Quarter
    backup: str
    last_number: int
    late: int  # the first such receipt
    part: int  # the supplementary backup to write: 2 for ``<quarter>.2``, ...

    @property
    def label(self) -> str:
        return f"{self.quarter}.{self.part}"


@dataclass(frozen=True, slots=True)
class _Register:
    id: str
    zone: ZoneInfo
    first: dt.date  # the local date of its first receipt
    closed_at: dt.datetime | None  # the local time of its Schlussbeleg

    def last_due(self, now: dt.datetime) -> Quarter:
        """The latest quarter that is over for this register: the one before ``now``'s
        (:data:`QUARTER_GRACE` ago), or the quarter of its Schlussbeleg (its DEP is final
        then, and nothing comes after)."""
        if self.closed_at is not None:
            return Quarter.of(self.closed_at.date())
        return Quarter.of((now - QUARTER_GRACE).astimezone(self.zone).date()).previous()

    def due_since(self, quarter: Quarter) -> dt.datetime:
        """When ``quarter``'s backup became due: its end, or the Schlussbeleg within it."""
        ends = quarter.ends_at(self.zone)
        return ends if self.closed_at is None else min(ends, self.closed_at)

    def due(self, done: list[BackupRecord], now: dt.datetime) -> list[Quarter]:
        """The quarters over and not backed up yet (not in ``done``), oldest first."""
        quarters, quarter, last = [], Quarter.of(self.first), self.last_due(now)
        done_quarters = {record.quarter for record in done}
        while quarter <= last:
            if str(quarter) not in done_quarters:
                quarters.append(quarter)
            quarter = quarter.next()
        return quarters


def _registers(conn: sqlite3.Connection, register_id: str | None = None) -> list[_Register]:
    registers = []
    for reg_id, timezone, state, last_issued_at, first in conn.execute(
        _REGISTERS, (register_id, register_id)
    ):
        zone = ZoneInfo(timezone)
        closed = None
        if state == "closed" and last_issued_at is not None:
            closed = dt.datetime.fromisoformat(last_issued_at).replace(tzinfo=zone)
        if first is not None:  # (a register is created with its Startbeleg)
            registers.append(_Register(reg_id, zone, dt.date.fromisoformat(first[:10]), closed))
    return registers


def _late(conn: sqlite3.Connection, register_id: str, done: list[BackupRecord]) -> list[_Late]:
    """The backed-up quarters of a register that have a receipt dated in them after their
    latest backup: the receipt after that backup's last one is dated in the quarter (a
    receipt is never dated before the one before it: no later one can be, if that is not)."""
    by_quarter: dict[str, list[BackupRecord]] = {}
    for record in done:
        by_quarter.setdefault(record.quarter.split(".")[0], []).append(record)
    found = []
    for text, records in sorted(by_quarter.items()):
        quarter, latest = Quarter.parse(text), max(records, key=lambda r: r.last_number)
        row = conn.execute(_NEXT_RECEIPT, (register_id, latest.last_number)).fetchone()
        if row is not None and quarter.first_day.isoformat() <= row[1] < _end(quarter):
            found.append(
                _Late(quarter, latest.quarter, latest.last_number, row[0], len(records) + 1)
            )
    return found


def _end(quarter: Quarter) -> str:
    """The first ``issued_at`` (a local time) after ``quarter``."""
    return quarter.next().first_day.isoformat()


def medium_name(register_id: str) -> str:
    """The name of a register's backup directory, and the start of its files' names: its
    Kassen-ID, with each ':' and each final '.' written as in a URL (``%3A``, ``%2E``), so
    it is a name on FAT and exFAT, and the first letter of a Windows device name (``CON``,
    ``NUL.K1``, ``com1``: Windows, where a stick is often read, opens no such directory) as
    well (``%43ON``). No two Kassen-IDs get one name ('%' is not in one)."""
    stem = register_id.rstrip(".")
    name = stem.replace(":", "%3A") + "%2E" * (len(register_id) - len(stem))
    if name.split(".", 1)[0].upper() in _WINDOWS_DEVICES:
        name = f"%{ord(name[0]):02X}{name[1:]}"
    return name


_WINDOWS_DEVICES = frozenset(
    ("CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(1, 10)))
)


def list_backups(conn: sqlite3.Connection, register_id: str | None = None) -> list[BackupRecord]:
    """The recorded backups, by register and quarter."""
    return [BackupRecord(*row) for row in conn.execute(_RECORDS, (register_id, register_id))]


def _by_register(records: list[BackupRecord]) -> dict[str, list[BackupRecord]]:
    grouped: dict[str, list[BackupRecord]] = {}
    for record in records:
        grouped.setdefault(record.register, []).append(record)
    return grouped


def backup_statuses(
    conn: sqlite3.Connection, now: dt.datetime, failures: dict[str, BackupFailure]
) -> dict[str, BackupStatus]:
    """Per register: its latest backup, whether one is overdue (a quarter with a receipt
    dated in it after its latest backup counts as not backed up), its current failure."""
    records = _by_register(list_backups(conn))
    late = now - dt.timedelta(days=OVERDUE_DAYS)
    statuses = {}
    for reg in _registers(conn):
        done = records.get(reg.id, [])
        missing = [*reg.due(done, now), *(item.quarter for item in _late(conn, reg.id, done))]
        overdue = any(reg.due_since(q) < late for q in missing)
        last = max(done, key=lambda r: r.quarter, default=None)
        statuses[reg.id] = BackupStatus(last, overdue, failures.get(reg.id))
    return statuses


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
        ``<quarter>.2`` (then ``.3``...), before the due quarters.
        """
        written: list[BackupRecord] = []
        failed: list[BackupFailed] = []
        now = self.clock.now()
        with self.db.read_connection() as conn:
            records = _by_register(list_backups(conn, register_id))
            registers = _registers(conn, register_id)
            late = {reg.id: _late(conn, reg.id, records.get(reg.id, [])) for reg in registers}
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
            reg = next(iter(_registers(conn, register_id)), None)
            if reg is None:
                raise NotFound(f"register {register_id!r} is not initialized in this till database")
            _check_quarter(reg, quarter, self.clock.now())
            records = list_backups(conn, register_id)
        if existing := next((r for r in records if r.quarter == str(quarter)), None):
            return existing, False
        try:
            return self._back_up(reg, quarter), True
        except BackupFailed as exc:
            self._failed(exc)
            raise

    def _back_up(self, reg: _Register, quarter: Quarter, label: str = "") -> BackupRecord:
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

    def _say_late(self, reg: _Register, item: _Late) -> None:
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
            append_event(conn, kind="dep.backup_late", register_id=reg.id, data=facts, at=at)
        self._late_said.add((reg.id, item.label))

    def _path(self, reg: _Register, label: str) -> Path:
        """``<dir>/<name>/<name>_<label>.dep.json`` (the label: the quarter, or a
        supplement's ``2026-Q1.2``): the name is :func:`medium_name` of
        the Kassen-ID, or the Kassen-ID itself where a directory of that name holds the
        register's earlier backups (written on a Linux file system before names were
        mapped), so they stay together and a file left there without a record is found."""
        name = medium_name(reg.id)
        if name != reg.id and _has_directory(self.directory, reg.id):
            name = reg.id
        return self.directory / name / f"{name}_{label}.dep.json"

    def _refusal(self, reg: _Register) -> str | None:
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

    def _export(self, reg: _Register, quarter: Quarter, out: BinaryIO | None) -> tuple[str, int]:
        sink = _Digest(out, self._stop)
        count = export_dep(self.db, reg.id, cast("IO[bytes]", sink), end=quarter.last_day)
        return sink.sha256.hexdigest(), count

    def _adopt(self, reg: _Register, quarter: Quarter, path: Path) -> tuple[str, int]:
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
        self, reg: _Register, label: str, path: Path, sha256: str, count: int
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


def _check_quarter(reg: _Register, quarter: Quarter, now: dt.datetime) -> None:
    """Only a quarter that is over and in the register's life has a backup."""
    if quarter < Quarter.of(reg.first):
        raise InvalidSale(
            "quarter",
            "quarter-before-register",
            f"register {reg.id} has receipts from {reg.first} on: {quarter} is before it",
        )
    last = reg.last_due(now)
    if quarter > last and reg.closed_at is not None:
        raise InvalidSale(
            "quarter",
            "after-schlussbeleg",
            f"register {reg.id} was closed by its Schlussbeleg in {last}: {quarter} has no DEP",
        )
    if quarter > last:
        raise InvalidSale(
            "quarter",
            "quarter-not-ended",
            f"{quarter} has not ended (a quarter ends at midnight after its last day,"
            f" {reg.zone.key}, and is backed up {_minutes(QUARTER_GRACE)} minutes later, once"
            f" its last sales have committed); the latest ended quarter is {last}",
        )


def _minutes(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() // 60)


def _reason(exc: OSError, path: Path) -> str:
    """The cause in words ("permission denied", "no space left on device"), after the path
    the error names when that is a directory on the way to ``path`` (one that cannot be
    made); not when it is ``path`` or its temporary file beside it (named already)."""
    reason = exc.strerror or str(exc)
    reason = reason[:1].lower() + reason[1:]
    if exc.filename is None or Path(exc.filename).parent == path.parent:
        return reason
    return f"{exc.filename}: {reason}"
