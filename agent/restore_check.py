"""What ``till-agent restore`` reads before it changes anything, and what it concludes: the
backup (checked as it will be restored) and the till database it would replace (its WAL
included), compared register by register (:func:`compare`).

Both are only read here. The backup copy is opened ``immutable`` (no -wal or -shm is made
beside it, and a WAL-mode header is read as it is: a ``.backup`` of a WAL database has
one); the current database read-only, so its WAL, where a killed service's last commits
are, counts, and nothing of it is checkpointed or removed (without a -wal, ``immutable``
too: nothing is made beside it).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from agent.errors import FiscalError, InvalidSale, StorageError
from storage.journal import verify_journal
from storage.migrate import alembic_config

__all__ = [
    "BackupBehind",
    "BackupCopy",
    "ConfirmationNeeded",
    "CurrentTill",
    "LastReceipt",
    "compare",
    "read_current",
]

# per register: its last number (the register row's, or its last receipt's if higher) and
# that receipt's Belegnummer, date, total and JWS (none for a register without receipts)
_LAST = (
    "SELECT g.id, max(g.last_number, coalesce(r.number, 0)), r.receipt_id, r.issued_at,"
    " r.amount_normal + r.amount_reduced1 + r.amount_reduced2 + r.amount_zero"
    " + r.amount_special, r.jws FROM registers g LEFT JOIN receipts r"
    " ON r.register_id = g.id AND r.number ="
    " (SELECT max(number) FROM receipts WHERE register_id = g.id) ORDER BY g.id"
)


@dataclass(frozen=True, slots=True)
class LastReceipt:
    """A register's last receipt: what the operator compares with the last one printed."""

    register: str
    number: int
    receipt_id: str | None
    issued_at: str | None
    total_cents: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def shown(self) -> str:
        """``KASSE-1 380 (Belegnummer B380, 2026-03-02T11:00:00, 3.20)``."""
        if self.receipt_id is None:
            return f"{self.register} {self.number} (no receipt yet)"
        total = "" if self.total_cents is None else f", {self.total_cents / 100:.2f}"
        return (
            f"{self.register} {self.number} (Belegnummer {self.receipt_id},"
            f" {self.issued_at}{total})"
        )


def _last_receipts(conn: sqlite3.Connection) -> tuple[list[LastReceipt], dict[str, str | None]]:
    """Every register's last receipt, and its JWS by register."""
    rows = conn.execute(_LAST).fetchall()
    last = [LastReceipt(str(r[0]), int(r[1]), r[2], r[3], r[4]) for r in rows]
    return last, {str(r[0]): r[5] for r in rows}


class BackupCopy:
    """The backup's copy in the data directory, open for reading (:meth:`opened`).

    Raises (from :meth:`check`):
        StorageError: not an SQLite file, damaged (integrity check), no till database, a
            schema revision this version does not know (a later one made it), or a broken
            journal hash chain; nothing is changed.
    """

    def __init__(self, path: Path, shown: Path) -> None:
        self.path = path
        self.shown = shown  # the backup file as the operator named it
        self._uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        self._conn: sqlite3.Connection | None = None

    @contextmanager
    def opened(self) -> Iterator[BackupCopy]:
        self._conn = sqlite3.connect(self._uri, uri=True)
        try:
            yield self
        finally:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "use BackupCopy.opened()"
        return self._conn

    def check(self) -> str:
        """Check the copy as a whole; its schema revision."""
        try:
            rows = [str(r[0]) for r in self.conn.execute("PRAGMA integrity_check").fetchall()]
            tables = {str(r[0]) for r in self.conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise self._refused(f"it cannot be read as an SQLite database ({exc})") from exc
        if rows != ["ok"]:
            raise self._refused(f"it is damaged: PRAGMA integrity_check says {rows[:5]}")
        if not {"alembic_version", "registers", "receipts", "journal"} <= tables:
            raise self._refused("it is no till database (no till-agent schema in it)")
        revision = self._revision()
        problems = self._journal_problems()
        if problems:
            shown = "; ".join(problems[:3])
            raise self._refused(f"its journal's hash chain is broken ({len(problems)}: {shown})")
        return revision

    def _revision(self) -> str:
        row = self.conn.execute("SELECT version_num FROM alembic_version").fetchone()
        if row is None:
            raise self._refused("it has no schema revision (alembic_version is empty)")
        revision = str(row[0])
        known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
        if revision not in known:
            raise self._refused(
                f"it has schema revision {revision!r}, which this version of till-agent does"
                " not know: a later version made it. Restore it with that version (or a"
                " later one)"
            )
        return revision

    def _journal_problems(self) -> list[str]:
        """:func:`storage.journal.verify_journal` on the copy (one more read connection)."""
        engine = create_engine(
            "sqlite://", creator=lambda: sqlite3.connect(self._uri, uri=True), poolclass=NullPool
        )
        try:
            with engine.connect() as conn:
                return verify_journal(conn)
        finally:
            engine.dispose()

    def last_receipts(self) -> tuple[list[LastReceipt], dict[str, str | None]]:
        return _last_receipts(self.conn)

    def jws_of(self, register: str, number: int) -> str | None:
        row = self.conn.execute(
            "SELECT jws FROM receipts WHERE register_id = ? AND number = ?", (register, number)
        ).fetchone()
        return None if row is None else str(row[0])

    def _refused(self, why: str) -> StorageError:
        return StorageError(f"the backup {self.shown} is refused: {why}; nothing was changed")


@dataclass(frozen=True, slots=True)
class CurrentTill:
    """The till database in the data directory as far as it can be read.

    ``problem`` is None when it was read (``last`` holds its registers' last receipts,
    ``jws`` their JWS, ``journal_seq`` its last event's sequence); else why not: there is
    none, or what failed.
    """

    problem: str | None
    last: tuple[LastReceipt, ...] = ()
    jws: tuple[tuple[str, str | None], ...] = ()
    journal_seq: int = 0  # its last journal event

    @property
    def readable(self) -> bool:
        return self.problem is None


def read_current(path: Path) -> CurrentTill:
    """The registers' last receipts in the database at ``path``, read-only, its WAL included
    (a service killed before its checkpoint has its last receipts there)."""
    if not path.exists():
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size > 0:  # its last commits, the database gone
            return CurrentTill(f"there is no {path.name}, only its -wal (moved aside too)")
        return CurrentTill(f"there is no {path.name}")
    try:
        with closing(sqlite3.connect(_read_only_uri(path), uri=True)) as conn:
            tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master")}
            if not {"registers", "receipts", "journal"} <= tables:
                return CurrentTill(f"{path.name} holds no till database")
            last, jws = _last_receipts(conn)
            seq = conn.execute("SELECT coalesce(max(seq), 0) FROM journal").fetchone()[0]
    except (sqlite3.Error, OSError) as exc:
        return CurrentTill(f"{path.name} cannot be read: {exc}")
    return CurrentTill(None, tuple(last), tuple(jws.items()), int(seq))


def _read_only_uri(path: Path) -> str:
    """Read-only; and ``immutable`` when neither a -wal nor a -journal is beside it: the
    file alone is the database then, and no -wal or -shm is made beside a cleanly stopped
    one (a refused restore leaves it as it was). With a -wal, its commits must count: SQLite
    reads it through a -shm it makes if there is none."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    sides = (Path(f"{path}{suffix}") for suffix in ("-wal", "-journal"))
    return uri if any(os.path.lexists(p) for p in sides) else f"{uri}&immutable=1"


class BackupBehind(FiscalError):
    """The backup ends before the till database in the data directory for a register:
    restoring it would issue numbers that are on paper. ``behind``: (register, the backup's
    last number or None when it lacks the register, the current last number)."""

    def __init__(self, data_dir: Path, behind: list[tuple[str, int | None, int]]) -> None:
        said = "; ".join(
            f"{reg}: not in the backup, the till database's last receipt is {cur}"
            if mine is None
            else f"{reg}: the backup's last receipt is {mine}, the till database's {cur}"
            for reg, mine, cur in behind
        )
        super().__init__(
            f"the backup is behind the till database in {data_dir} ({said}). Restoring it"
            " would issue those numbers again, and they are on customers' paper (a"
            " Belegnummer is unique per Kassen-ID); nothing was changed. Restore a backup"
            " at least as recent, or keep the database"
        )
        self.behind = behind

    def fields(self) -> list[dict[str, Any]]:
        return [{"register": r, "backup_number": b, "current_number": c} for r, b, c in self.behind]


class ConfirmationNeeded(InvalidSale):
    """Nothing in the data directory shows whether receipts were issued after the backup's
    last ones (no readable till database, or one of another till): ``--yes`` says the
    operator checked them against the last receipt printed and the POS."""

    def __init__(self, why: str, last: list[LastReceipt]) -> None:
        shown = "; ".join(r.shown() for r in last) or "no register"
        super().__init__(
            "--yes",
            "confirm",
            f"--yes is needed: {why}, so nothing here shows whether receipts were issued"
            f" after the backup's last ones: {shown}. Compare them with the last receipt"
            " each register printed and with the POS; if they are the last ones, run the"
            " restore again with --yes. If a register issued receipts after them, do not"
            " restore it for selling: those numbers are on paper, and its Kassen-ID must not"
            " sign again. Report that register's failure in FinanzOnline within a week"
            " (rksv.md 5) and set up a new register (`till-agent init NEW-ID --unit ...`);"
            " see README.md, Operations, Restore. Nothing was changed",
        )
        self.last = last


def compare(
    copy: BackupCopy,
    last: list[LastReceipt],
    current: CurrentTill,
    data_dir: Path,
    confirmed: bool,
) -> bool:
    """Refuse a backup behind the current database; ask for ``confirmed`` when there is
    none, or it is another till's (its last receipt is not the backup's of that number).
    Whether the current database vouched for the backup (else ``confirmed`` did)."""
    if not current.readable:
        if not confirmed:
            raise ConfirmationNeeded(f"in the data directory {data_dir} {current.problem}", last)
        return False
    mine = {r.register: r.number for r in last}
    behind = [
        (r.register, mine.get(r.register), r.number)
        for r in current.last
        if mine.get(r.register, 0) < r.number
    ]
    if behind:
        raise BackupBehind(data_dir, behind)
    other = [reg for reg, jws in current.jws if jws is not None and _differs(copy, reg, current)]
    if other and not confirmed:
        raise ConfirmationNeeded(
            f"the till database in {data_dir} is not the backup's till: the last receipt of"
            f" {', '.join(other)} differs from the backup's receipt of that number (a"
            " database set up anew, or another till's; it would be moved aside, not deleted)",
            last,
        )
    return not other


def _differs(copy: BackupCopy, register: str, current: CurrentTill) -> bool:
    number = next(r.number for r in current.last if r.register == register)
    return copy.jws_of(register, number) != dict(current.jws)[register]
