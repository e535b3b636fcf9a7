"""The schedule of the quarterly DEP backups (:mod:`agent.backup`): quarters, which are
due for a register and since when, what was recorded, a register's backup status, and the
receipts dated in a quarter after its backup was written.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from agent.errors import BackupFailed, InvalidSale

__all__ = [
    "OVERDUE_DAYS",
    "QUARTER_GRACE",
    "BackupFailure",
    "BackupRecord",
    "BackupStatus",
    "DueRun",
    "LateReceipt",
    "Quarter",
    "ScheduledRegister",
    "backup_statuses",
    "by_register",
    "check_quarter",
    "label_order",
    "late_receipts",
    "list_backups",
    "medium_name",
    "scheduled_registers",
]

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
# ordered by list_backups: SQL orders quarter as text, where 2026-Q1.10 precedes 2026-Q1.2
_RECORDS = (
    "SELECT register_id, quarter, path, sha256, receipts, last_number, written_at"
    " FROM dep_backups WHERE ? IS NULL OR register_id = ?"
)
_NEXT_RECEIPT = (
    "SELECT number, issued_at FROM receipts WHERE register_id = ? AND number > ?"
    " ORDER BY number LIMIT 1"
)


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
class LateReceipt:
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
class ScheduledRegister:
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


def scheduled_registers(
    conn: sqlite3.Connection, register_id: str | None = None
) -> list[ScheduledRegister]:
    registers = []
    for reg_id, timezone, state, last_issued_at, first in conn.execute(
        _REGISTERS, (register_id, register_id)
    ):
        zone = ZoneInfo(timezone)
        closed = None
        if state == "closed" and last_issued_at is not None:
            closed = dt.datetime.fromisoformat(last_issued_at).replace(tzinfo=zone)
        if first is not None:  # (a register is created with its Startbeleg)
            registers.append(
                ScheduledRegister(reg_id, zone, dt.date.fromisoformat(first[:10]), closed)
            )
    return registers


def late_receipts(
    conn: sqlite3.Connection, register_id: str, done: list[BackupRecord]
) -> list[LateReceipt]:
    """The backed-up quarters of a register that have a receipt dated in them after their
    latest backup: the receipt after that backup's last one is dated in the quarter (a
    receipt is never dated before the one before it: no later one can be, if that is not)."""
    by_quarter: dict[str, list[BackupRecord]] = {}
    for record in done:
        by_quarter.setdefault(record.quarter.split(".")[0], []).append(record)
    found = []
    for text, records in sorted(by_quarter.items(), key=lambda item: label_order(item[0])):
        quarter, latest = Quarter.parse(text), max(records, key=lambda r: r.last_number)
        row = conn.execute(_NEXT_RECEIPT, (register_id, latest.last_number)).fetchone()
        if row is not None and quarter.first_day.isoformat() <= row[1] < _end(quarter):
            found.append(
                LateReceipt(quarter, latest.quarter, latest.last_number, row[0], len(records) + 1)
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
    """The recorded backups, by register, then quarter and supplement (:func:`label_order`)."""
    records = [BackupRecord(*row) for row in conn.execute(_RECORDS, (register_id, register_id))]
    return sorted(records, key=lambda r: (r.register, label_order(r.quarter)))


def label_order(label: str) -> tuple[Quarter, int]:
    """The place of a backup named ``label`` among a register's: by quarter, then its
    supplements by number (``2026-Q1``, ``2026-Q1.2``, ... ``2026-Q1.10``; as text,
    ``.10`` would come before ``.2``)."""
    quarter, _, part = label.partition(".")
    return Quarter.parse(quarter), int(part or 1)


def by_register(records: list[BackupRecord]) -> dict[str, list[BackupRecord]]:
    grouped: dict[str, list[BackupRecord]] = {}
    for record in records:
        grouped.setdefault(record.register, []).append(record)
    return grouped


def backup_statuses(
    conn: sqlite3.Connection, now: dt.datetime, failures: dict[str, BackupFailure]
) -> dict[str, BackupStatus]:
    """Per register: its latest backup, whether one is overdue (a quarter with a receipt
    dated in it after its latest backup counts as not backed up), its current failure."""
    records = by_register(list_backups(conn))
    late = now - dt.timedelta(days=OVERDUE_DAYS)
    statuses = {}
    for reg in scheduled_registers(conn):
        done = records.get(reg.id, [])
        missing = [
            *reg.due(done, now),
            *(item.quarter for item in late_receipts(conn, reg.id, done)),
        ]
        overdue = any(reg.due_since(q) < late for q in missing)
        last = max(done, key=lambda r: label_order(r.quarter), default=None)
        statuses[reg.id] = BackupStatus(last, overdue, failures.get(reg.id))
    return statuses


def check_quarter(reg: ScheduledRegister, quarter: Quarter, now: dt.datetime) -> None:
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
