"""SQLAlchemy models of the till database. Schema changes go through Alembic only.

``receipts`` and ``journal`` are append-only: triggers (created by the migrations, see
:data:`APPEND_ONLY_TABLES`) abort any UPDATE or DELETE. Mutable per-register state
(the next number, the counter, the last JWS) lives in ``registers`` and is changed in the
same transaction that appends the receipt and its journal event.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import (
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "APPEND_ONLY_TABLES",
    "DEP_BACKUPS",
    "JOURNAL",
    "OUTAGES",
    "PENDING_SIGNINGS",
    "PRINT_JOBS",
    "RECEIPTS",
    "REGISTERS",
    "REGISTER_UNITS",
    "RESOLUTIONS",
    "UNITS",
    "WAITING_SPECIALS",
    "Base",
    "Check",
    "DepBackup",
    "JournalEvent",
    "Outage",
    "PendingSigning",
    "PrintJob",
    "Receipt",
    "ReceiptResolution",
    "Register",
    "RegisterUnit",
    "Unit",
    "WaitingSpecial",
]

APPEND_ONLY_TABLES = (
    "receipts",
    "journal",
    "receipt_resolutions",
    "dep_backups",
    "pending_signings",
)

_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)


class Unit(Base):
    """A signature unit known to this till: its configuration and identity."""

    __tablename__ = "units"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    config: Mapped[str] = mapped_column(Text)  # UnitConfig as JSON
    zda: Mapped[str] = mapped_column(String(16))
    serial: Mapped[str] = mapped_column(String(128))
    public_key_der: Mapped[bytes] = mapped_column(LargeBinary)
    certificate_der: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[str] = mapped_column(String(32))


class Register(Base):
    """A cash register (Kassen-ID) and its running state."""

    __tablename__ = "registers"
    __table_args__ = (
        CheckConstraint("state IN ('active', 'closed')", name="state"),
        CheckConstraint("counter_bytes BETWEEN 5 AND 16", name="counter_bytes"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    closed_system: Mapped[bool] = mapped_column()
    counter_bytes: Mapped[int] = mapped_column(Integer, default=8)
    aes_key: Mapped[str] = mapped_column(String(64))  # base64, 32 bytes
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/Vienna")
    receipt_id_format: Mapped[str] = mapped_column(String(64), default="{number}")
    state: Mapped[str] = mapped_column(String(16), default="active")
    active_unit: Mapped[str] = mapped_column(ForeignKey("units.id"))
    last_number: Mapped[int] = mapped_column(Integer, default=0)
    turnover_cents: Mapped[int] = mapped_column(Integer, default=0)
    last_jws: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_issued_at: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[str] = mapped_column(String(32))
    # the last month ("YYYY-MM", register time zone) whose Monats-/Jahresbeleg was issued
    last_closing: Mapped[str | None] = mapped_column(String(7), nullable=True)


class RegisterUnit(Base):
    """The units a register may sign with, in order (``usedSignatureDevice`` picks one)."""

    __tablename__ = "register_units"

    register_id: Mapped[str] = mapped_column(ForeignKey("registers.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[str] = mapped_column(ForeignKey("units.id"))


class Receipt(Base):
    """One receipt of one register, exactly as it was signed and journaled.

    The partial indexes (0009) hold only the rare receipts that the probe loop, the status,
    a Storno, the remedy and the check watch look for, so none of them reads the history:
    the unsigned ones, the Stornos (by the receipt they void) and the Start- and
    Jahresbelege. An ordinary signed sale writes none of them. SQLite uses a partial index
    only for a query whose WHERE implies the index's own, so the queries repeat it."""

    __tablename__ = "receipts"
    __table_args__ = (
        UniqueConstraint("register_id", "number"),
        UniqueConstraint("register_id", "receipt_id"),
        UniqueConstraint("register_id", "request_id"),
        CheckConstraint(
            "signature_state IN ('signed', 'fallback', 'unsigned')", name="signature_state"
        ),
        Index(
            "ix_receipts_unsigned",
            "register_id",
            "number",
            sqlite_where=text("signature_state = 'unsigned'"),
        ),
        Index(
            "ix_receipts_voids",
            "register_id",
            "voids_number",
            "number",
            sqlite_where=text("voids_number IS NOT NULL"),
        ),
        Index(
            "ix_receipts_start_yearly",
            "register_id",
            "number",
            sqlite_where=text("kind IN ('start', 'yearly')"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    register_id: Mapped[str] = mapped_column(ForeignKey("registers.id"))
    number: Mapped[int] = mapped_column(Integer)
    receipt_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    sale_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    issued_at: Mapped[str] = mapped_column(String(19))
    amount_normal: Mapped[int] = mapped_column(Integer)
    amount_reduced1: Mapped[int] = mapped_column(Integer)
    amount_reduced2: Mapped[int] = mapped_column(Integer)
    amount_zero: Mapped[int] = mapped_column(Integer)
    amount_special: Mapped[int] = mapped_column(Integer)
    turnover_cents: Mapped[int] = mapped_column(Integer)  # after this receipt
    jws: Mapped[str] = mapped_column(Text)
    signature_state: Mapped[str] = mapped_column(String(16))
    unit_id: Mapped[str] = mapped_column(ForeignKey("units.id"))
    voids_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    document: Mapped[str] = mapped_column(Text)  # the sale and printable lines, JSON
    journal_seq: Mapped[int] = mapped_column(Integer)


class Outage(Base):
    """An outage of a register's signature unit: opened by the first failed signing or
    probe, closed only by the signed Sammelbeleg. Each change is also a journal event."""

    __tablename__ = "outages"
    __table_args__ = (
        Index(
            "ix_outages_one_open",
            "register_id",
            unique=True,
            sqlite_where=text("ended_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    register_id: Mapped[str] = mapped_column(ForeignKey("registers.id"))
    unit_id: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[str] = mapped_column(String(32))  # UTC, ISO 8601
    cause: Mapped[str] = mapped_column(Text)
    first_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    affected: Mapped[int] = mapped_column(Integer)
    probe_attempts: Mapped[int] = mapped_column(Integer)
    age_seconds: Mapped[float] = mapped_column(Float)  # measured on the monotonic clock
    checked_at: Mapped[str] = mapped_column(String(32))  # wall time of the last age update
    escalations: Mapped[str] = mapped_column(Text)  # JSON list of the levels sent
    report_due: Mapped[str | None] = mapped_column(String(32), nullable=True)
    report_reference: Mapped[str | None] = mapped_column(Text, nullable=True)
    end_report_reference: Mapped[str | None] = mapped_column(Text, nullable=True)
    # past 48 h, the end (Wiederinbetriebnahme) is reported within a week of it (0007)
    end_report_due: Mapped[str | None] = mapped_column(String(32), nullable=True)
    ended_at: Mapped[str | None] = mapped_column(String(32), nullable=True)
    sammelbeleg_number: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ReceiptResolution(Base):
    """How an ``unsigned`` receipt was remedied (append-only, one per receipt).

    ``adopted``: the chain service had signed it (``signed_jws`` is its answer);
    ``superseded``: the service never had it, so a Nullbeleg was issued and the sale
    reissued as ``replacement_number`` (none when a POS Storno had voided the sale).
    ``voided_number``: the Storno that voided a superseded receipt (the POS's, or the
    remedy's own before the replacement), as its journal event names it (``voided_by``);
    none for the others (0010 backfilled it).
    """

    __tablename__ = "receipt_resolutions"
    __table_args__ = (
        CheckConstraint("resolution IN ('adopted', 'superseded')", name="resolution"),
    )

    register_id: Mapped[str] = mapped_column(ForeignKey("registers.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    resolution: Mapped[str] = mapped_column(String(16))
    signed_jws: Mapped[str | None] = mapped_column(Text, nullable=True)
    replacement_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    at: Mapped[str] = mapped_column(String(32))
    voided_number: Mapped[int | None] = mapped_column(Integer, nullable=True)


class WaitingSpecial(Base):
    """A receipt that must be validly signed and waits for the unit (Start-, Jahres-,
    Sammel-, Schlussbeleg). ``setup`` holds the register setup of a waiting Startbeleg, or
    the signing intent of a Schlussbeleg a chain service may hold (sent again unchanged)."""

    __tablename__ = "waiting_specials"
    __table_args__ = (
        Index(
            "ix_waiting_specials_one_open",
            "register_id",
            "kind",
            "period",
            unique=True,
            sqlite_where=text("done_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    register_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    period: Mapped[str | None] = mapped_column(String(7), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    setup: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: Start-, Schlussbeleg
    requested_at: Mapped[str] = mapped_column(String(32))
    done_at: Mapped[str | None] = mapped_column(String(32), nullable=True)
    number: Mapped[int | None] = mapped_column(Integer, nullable=True)


class PendingSigning(Base):
    """A signing request to a chain service, committed before the request left.

    ``intent`` (JSON) holds what storing the receipt as ``unsigned`` needs (a Startbeleg's:
    its register setup and date). Append-only: it is done once receipt ``number`` exists;
    one whose receipt is missing at start is stored as a lost answer would have been.
    """

    __tablename__ = "pending_signings"
    __table_args__ = (
        Index("ix_pending_signings_number", "register_id", "number"),
        Index(
            "ix_pending_signings_start",
            "kind",
            "register_id",
            sqlite_where=text("kind = 'start'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    register_id: Mapped[str] = mapped_column(String(64))
    number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    intent: Mapped[str] = mapped_column(Text)
    at: Mapped[str] = mapped_column(String(32))


class PrintJob(Base):
    """One print of one receipt: its ESC/POS bytes while it is open (emptied once it is
    printed: a reprint renders the stored receipt again) and the state of sending them.
    Printing happens after the commit (invariant 1). The worker and the status read the
    open jobs through ``ix_print_jobs_open``, whose WHERE their queries repeat word for
    word (SQLite uses a partial index only then)."""

    __tablename__ = "print_jobs"
    __table_args__ = (
        UniqueConstraint("register_id", "number", "copy"),
        CheckConstraint("state IN ('queued', 'printed', 'failed', 'skipped')", name="state"),
        Index("ix_print_jobs_open", "id", sqlite_where=text("state IN ('queued', 'failed')")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    register_id: Mapped[str] = mapped_column(String(64))
    number: Mapped[int] = mapped_column(Integer)
    copy: Mapped[int] = mapped_column(Integer)  # 0 = the original, 1.. = reprints
    data: Mapped[bytes] = mapped_column(LargeBinary)  # x'' once printed or skipped
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[str] = mapped_column(String(32))
    done_at: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Check(Base):
    """A check the operator owes after a signed Startbeleg or Jahresbeleg (rksv.md 6), or
    the FinanzOnline report of the decommissioning after a Schlussbeleg (rksv.md 5), or
    the registration of the unit a register switched to (``unit``, 0011): due by
    ``due_date`` (register time zone), done once its reference is recorded. Each kind is
    owed once a year, a ``unit`` one once per switch (keyed by its first receipt number):
    at most one open per receipt number, and as many recorded as switches before that
    receipt changed the unit FinanzOnline knows (0012)."""

    __tablename__ = "checks"
    __table_args__ = (
        Index(
            "ix_checks_once_a_year",
            "register_id",
            "kind",
            "year",
            unique=True,
            sqlite_where=text("kind != 'unit'"),
        ),
        Index(
            "ix_checks_unit_switch_open",
            "register_id",
            "receipt_number",
            unique=True,
            sqlite_where=text("kind = 'unit' AND done_at IS NULL"),
        ),
        CheckConstraint("kind IN ('start', 'yearly', 'closing', 'unit')", name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    register_id: Mapped[str] = mapped_column(ForeignKey("registers.id"))
    kind: Mapped[str] = mapped_column(String(16))
    year: Mapped[int] = mapped_column(Integer)
    # the Start-/Jahres-/Schlussbeleg; a unit switch's: the first receipt after it
    receipt_number: Mapped[int] = mapped_column(Integer)
    due_date: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD, register time zone
    created_at: Mapped[str] = mapped_column(String(32))  # UTC, ISO 8601
    alerts: Mapped[str] = mapped_column(Text)  # JSON list of the reminders sent
    reference: Mapped[str | None] = mapped_column(Text, nullable=True)
    failed: Mapped[bool] = mapped_column()
    done_at: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # a recorded unit check's: the unit registered in FinanzOnline, the one that signs (or
    # was to sign) from its receipt number on (0012); NULL while open and for other kinds
    registered_unit: Mapped[str | None] = mapped_column(String(64), nullable=True)


class DepBackup(Base):
    """A quarterly DEP backup (§ 7 Abs 3 RKSV): the register's DEP from its first receipt
    to the quarter's last day, written once to ``path`` (append-only, one per quarter)."""

    __tablename__ = "dep_backups"

    register_id: Mapped[str] = mapped_column(ForeignKey("registers.id"), primary_key=True)
    quarter: Mapped[str] = mapped_column(String(7), primary_key=True)  # "2026-Q3"
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))  # of the file, hex
    receipts: Mapped[int] = mapped_column(Integer)
    last_number: Mapped[int] = mapped_column(Integer)
    written_at: Mapped[str] = mapped_column(String(32))  # UTC, ISO 8601


class JournalEvent(Base):
    """The append-only journal: a global sequence, each event hashing the previous one.

    ``ix_journal_backup_late`` (0009) holds only the rare ``dep.backup_late`` events, which
    the backup job looks up before it journals one."""

    __tablename__ = "journal"
    __table_args__ = (
        Index(
            "ix_journal_backup_late",
            "register_id",
            sqlite_where=text("kind = 'dep.backup_late'"),
        ),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(32))  # UTC, ISO 8601
    register_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str] = mapped_column(String(64))
    data: Mapped[str] = mapped_column(Text)  # JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


# Core tables for the hot path (typed as Table so insert()/update() type-check).
UNITS = cast(Table, Unit.__table__)
REGISTERS = cast(Table, Register.__table__)
REGISTER_UNITS = cast(Table, RegisterUnit.__table__)
RECEIPTS = cast(Table, Receipt.__table__)
JOURNAL = cast(Table, JournalEvent.__table__)
OUTAGES = cast(Table, Outage.__table__)
RESOLUTIONS = cast(Table, ReceiptResolution.__table__)
WAITING_SPECIALS = cast(Table, WaitingSpecial.__table__)
PRINT_JOBS = cast(Table, PrintJob.__table__)
DEP_BACKUPS = cast(Table, DepBackup.__table__)
PENDING_SIGNINGS = cast(Table, PendingSigning.__table__)
