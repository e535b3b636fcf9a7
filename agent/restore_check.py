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

import json
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
from agent.interrupted import LIVE_INTENTS
from storage.journal import verify_journal
from storage.migrate import alembic_config

__all__ = [
    "BackupBehind",
    "BackupCopy",
    "ConfirmationNeeded",
    "CurrentTill",
    "LastReceipt",
    "SwitchedAfterBackup",
    "UnitSwitch",
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
# per register: the highest number of a chain signing whose receipt is not stored and that
# is not void (the last intent of its number), as agent.interrupted reads them: past the
# register's last number, or a Startbeleg's of a register not created. The chain service
# may hold it signed, and the next write transaction stores it under that number. The
# intents are agent.interrupted's own query, not a copy of it.
_SIGNING = (
    f"SELECT register_id, max(number) FROM ({LIVE_INTENTS}) WHERE kind != 'void'"  # noqa: S608
    " GROUP BY register_id"
)
_SWITCHED = "register.unit_switched"  # agent.unit_switch's journal event
_SWITCHES = "SELECT seq, register_id, data, at, hash FROM journal WHERE kind = ? ORDER BY seq"


@dataclass(frozen=True, slots=True)
class LastReceipt:
    """A register's last receipt: what the operator compares with the last one printed."""

    register: str
    number: int
    receipt_id: str | None
    issued_at: str | None
    total_cents: int | None
    # the number of a chain signing after it whose process ended before its receipt was
    # stored (agent.interrupted): the chain service may hold it signed
    signing: int | None = None

    @property
    def reached(self) -> int:
        """The last number the register gave out: its last receipt's, or an interrupted
        chain signing's after it."""
        return max(self.number, self.signing or 0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def shown(self) -> str:
        """``KASSE-1 380 (Belegnummer B380, 2026-03-02T11:00:00, 3.20)``."""
        signing = (
            ""
            if self.signing is None
            else f"; the chain service's signing of {self.signing} was interrupted"
        )
        if self.receipt_id is None:
            return f"{self.register} {self.number} (no receipt yet{signing})"
        total = "" if self.total_cents is None else f", {self.total_cents / 100:.2f}"
        return (
            f"{self.register} {self.number} (Belegnummer {self.receipt_id},"
            f" {self.issued_at}{total}{signing})"
        )


@dataclass(frozen=True, slots=True)
class UnitSwitch:
    """A ``register.unit_switched`` journal event (agent.unit_switch)."""

    seq: int
    register: str
    old_unit: str
    new_unit: str
    at: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def shown(self) -> str:
        """``KASSE-1 from c1 to c2 (2026-03-02T11:00:00+00:00, journal event 7)``."""
        return (
            f"{self.register} from {self.old_unit} to {self.new_unit} ({self.at}, journal"
            f" event {self.seq})"
        )


def _last_receipts(conn: sqlite3.Connection) -> tuple[list[LastReceipt], dict[str, str | None]]:
    """Every register's last receipt (with a chain signing interrupted after it, and a
    register whose Startbeleg's signing was interrupted before it was created), and its
    JWS by register."""
    rows = conn.execute(_LAST).fetchall()
    tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master")}
    signing: dict[str, int] = {}
    if "pending_signings" in tables:  # schema revision 0006 on
        signing = {str(r[0]): int(r[1]) for r in conn.execute(_SIGNING)}
    last = [
        LastReceipt(str(r[0]), int(r[1]), r[2], r[3], r[4], _past(signing.pop(str(r[0]), 0), r[1]))
        for r in rows
    ]
    last += [LastReceipt(reg, 0, None, None, None, n) for reg, n in sorted(signing.items())]
    return last, {str(r[0]): r[5] for r in rows}


def _past(signing: int, number: int) -> int | None:
    return signing if signing > number else None


def _switches(conn: sqlite3.Connection) -> list[UnitSwitch]:
    """Every unit switch the journal holds (a few in a till's life)."""
    switches = []
    for seq, register, data, at, digest in conn.execute(_SWITCHES, (_SWITCHED,)):
        facts = json.loads(data)
        switches.append(
            UnitSwitch(
                int(seq), str(register), str(facts["old_unit"]), str(facts["new_unit"]), at, digest
            )
        )
    return switches


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
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_CORRUPT:  # damage it met midway
                raise self._refused(
                    f"it is damaged: PRAGMA integrity_check stopped: {exc}"
                ) from exc
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

    def has_event(self, seq: int, digest: str) -> bool:
        """Whether the copy's journal holds that event (its sequence and hash)."""
        row = self.conn.execute(
            "SELECT 1 FROM journal WHERE seq = ? AND hash = ?", (seq, digest)
        ).fetchone()
        return row is not None

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
    ``jws`` their JWS, ``journal_seq`` its last event's sequence, ``switches`` its unit
    switches); else why not: there is none, or what failed.
    """

    problem: str | None
    last: tuple[LastReceipt, ...] = ()
    jws: tuple[tuple[str, str | None], ...] = ()
    journal_seq: int = 0  # its last journal event
    switches: tuple[UnitSwitch, ...] = ()

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
            switches = _switches(conn)
    except (sqlite3.Error, OSError, ValueError, KeyError) as exc:
        return CurrentTill(f"{path.name} cannot be read: {exc}")
    return CurrentTill(None, tuple(last), tuple(jws.items()), int(seq), tuple(switches))


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
    restoring it would issue numbers that are on paper (or that the chain service may hold
    signed: ``interrupted`` names the registers whose last number is a chain signing a
    process left unfinished). ``behind``: (register, the backup's last number or None when
    it lacks the register, the current last number)."""

    def __init__(
        self,
        data_dir: Path,
        behind: list[tuple[str, int | None, int]],
        interrupted: frozenset[str] = frozenset(),
    ) -> None:
        said = "; ".join(
            (
                f"{reg}: not in the backup, the till database's last receipt is {cur}"
                if mine is None
                else f"{reg}: the backup's last receipt is {mine}, the till database's {cur}"
            )
            + (
                f" (the chain service was signing {cur} when a process ended: it may hold"
                " it signed, and the till stores it at its next write)"
                if reg in interrupted
                else ""
            )
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


class SwitchedAfterBackup(FiscalError):
    """The till database in the data directory, this till's, switched a register to
    another signature unit after the backup (agent.unit_switch): restoring it would undo the
    switch, and the register would sign with the unit it left again (the one whose failure
    is owed to FinanzOnline), its new unit's FinanzOnline obligation gone. Refused like a
    backup behind: --yes confirms receipts, not this."""

    def __init__(self, data_dir: Path, switches: list[UnitSwitch]) -> None:
        said = "; ".join(s.shown() for s in switches)
        super().__init__(
            f"the backup is behind the till database in {data_dir}: it switched {said}"
            " after the backup. Restoring it would undo that: the register would sign with"
            " the unit it left again, and the new unit and its FinanzOnline obligation"
            " would be gone; nothing was changed. Restore a backup taken after the switch,"
            " or keep the database"
        )
        self.switches = switches

    def fields(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.switches]


class ConfirmationNeeded(InvalidSale):
    """Nothing in the data directory shows whether receipts were issued after the backup's
    last ones (no readable till database, or one of another till, or one without a register
    of the backup's): ``--yes`` says the operator checked them against the last receipt
    printed and the POS."""

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
    """Refuse a backup behind the current database (a register's last number, an
    interrupted chain signing's included, or a unit switch of this till); ask for
    ``confirmed`` when there is none, or it is another till's (its last receipt is not the
    backup's of that number), or it shares no register with receipts with the backup (a
    database made afresh). Whether the current database vouched for the backup (else
    ``confirmed`` did)."""
    if not current.readable:
        if not confirmed:
            raise ConfirmationNeeded(f"in the data directory {data_dir} {current.problem}", last)
        return False
    mine = {r.register: r.reached for r in last}
    behind = [
        (r.register, mine.get(r.register), r.reached)
        for r in current.last
        if mine.get(r.register, 0) < r.reached
    ]
    if behind:
        interrupted = frozenset(r.register for r in current.last if r.reached > r.number)
        raise BackupBehind(data_dir, behind, interrupted)
    receipts = [reg for reg, jws in current.jws if jws is not None]
    other = [reg for reg in receipts if _differs(copy, reg, current)]
    ours = set(receipts) - set(other)
    switched = [
        s for s in current.switches if s.register in ours and not copy.has_event(s.seq, s.hash)
    ]
    if switched:
        raise SwitchedAfterBackup(data_dir, switched)
    if other and not confirmed:
        raise ConfirmationNeeded(
            f"the till database in {data_dir} is not the backup's till: the last receipt of"
            f" {', '.join(other)} differs from the backup's receipt of that number (a"
            " database set up anew, or another till's; it would be moved aside, not deleted)",
            last,
        )
    if not receipts and not confirmed:
        raise ConfirmationNeeded(
            f"the till database in {data_dir} holds no receipt of a register of the backup"
            " (a database made afresh, by `unit create-software` or `unit add-pkcs11` on a"
            " new machine, or by a service started before the restore; it would be moved"
            " aside, not deleted)",
            last,
        )
    return bool(receipts) and not other


def _differs(copy: BackupCopy, register: str, current: CurrentTill) -> bool:
    number = next(r.number for r in current.last if r.register == register)
    return copy.jws_of(register, number) != dict(current.jws)[register]
