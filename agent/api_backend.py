"""What the local API serves: its response models, the backend protocol and the backend
over the receipt service and the till database.

The API (:mod:`agent.api`) only speaks HTTP; everything it answers comes from an
:class:`ApiBackend`. :class:`ServiceBackend` is the real one. Reads for the status and
the outages use the reader engine (a deferred transaction in WAL), so a support tool
polling the till never waits for a receipt being signed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast, get_args

from pydantic import BaseModel, ConfigDict, Field

from agent import __version__
from agent.backup import BackupStatus, DepBackups, backup_statuses
from agent.check_view import CheckOut, check_out
from agent.checks import CheckKind, load_checks, record_check
from agent.contract import REFERENCE_MAX_LENGTH, ReceiptResult, RequestId, parse_sale
from agent.errors import FiscalError, InvalidSale, NotFound, WaitsForUnit
from agent.metrics import MetricsSnapshot, process_start_time, render, spool_backlog
from agent.outage_view import OutageOut, outage_out
from agent.outage_watch import HOUR, Thresholds, acknowledge_report
from agent.outages import OutageRecord, load_outages
from agent.printing.jobs import QUEUED_PRINTS
from agent.receipts import Issued, ReceiptService
from agent.registers import register_row
from agent.signing.software import is_self_signed

__all__ = [
    "ApiBackend",
    "BackupOut",
    "CheckDoneIn",
    "CheckOut",
    "DiskOut",
    "Issued",
    "OpenOutageOut",
    "OutageOut",
    "PrinterOut",
    "RegisterStatusOut",
    "ReportIn",
    "ReprintOut",
    "ServiceBackend",
    "SpecialKind",
    "StatusOut",
    "UnitOut",
    "ZeroReceiptIn",
]

log = logging.getLogger(__name__)

SpecialKind = Literal["start", "null", "monthly", "yearly", "closing", "sammelbeleg"]
UnitState = Literal["up", "down", "unknown"]


class _Out(BaseModel):
    # ``register`` is a BaseModel attribute: fields take it as an alias (as ReceiptResult)
    model_config = ConfigDict(
        frozen=True, extra="forbid", serialize_by_alias=True, validate_by_name=True
    )


class UnitOut(_Out):
    """The register's active signature unit. ``certified``: it signs with a certificate
    that someone else issued (an open system's trust service provider); ``False`` for a
    self-signed certificate (issuer == subject, as the development units' are), for the
    development unit and for a closed system's key (AT0)."""

    id: str
    state: UnitState
    certified: bool


class OpenOutageOut(_Out):
    """The open outage of a register: its age and the deadlines that follow from it.
    ``recovery_failed``: why the last recovery failed although the unit answered its probe
    (e.g. its signatures do not verify), ``None`` if that has not happened.
    ``unit_problem``: why the unit failed its last probe (the token is gone, its PIN was
    rejected, another key is under its label, a restart is needed), ``None`` when it
    answered its last probe or has not been probed yet."""

    id: int
    started_at: dt.datetime
    age_s: float
    cause: str
    affected: int
    deadline_48h_at: dt.datetime
    report_due_at: dt.datetime | None
    recovery_failed: str | None = None
    unit_problem: str | None = None


class ReportDueOut(_Out):
    """A FinanzOnline report an outage owes (rksv.md 5): ``outage``, the report of an
    outage past 48 hours, or ``end``, the report of its end, due once its Sammelbeleg
    has closed it. Listed until its reference is recorded (``till-agent outage report``,
    ``POST /v1/outages/{id}/report``); ``overdue`` once its due time has passed."""

    outage: int
    report: Literal["outage", "end"]
    due_at: dt.datetime
    overdue: bool


class LastBackupOut(_Out):
    """The latest quarterly DEP backup written: its file and the file's SHA-256."""

    quarter: str
    path: str
    sha256: str
    at: dt.datetime


class BackupFailureOut(_Out):
    """Why the register's latest backup attempt failed (it is retried)."""

    quarter: str
    error: str
    at: dt.datetime


class BackupOut(_Out):
    """The register's quarterly DEP backups (§ 7 Abs 3 RKSV). ``overdue``: a quarter ended
    more than 7 days ago without a backup; ``failure``: the latest failure of the current
    run of failures, ``None`` once a backup is written again; ``external``: whether the
    backup directory is on another file system than the data directory (§ 7 Abs 3 asks
    for an external medium; ``false`` means the backups are on the till's own disk),
    ``None`` when the service writes no backups."""

    last: LastBackupOut | None
    overdue: bool
    failure: BackupFailureOut | None
    external: bool | None = None


_NO_BACKUP = BackupOut(last=None, overdue=False, failure=None)


class RegisterStatusOut(_Out):
    register_id: str = Field(alias="register")
    state: Literal["active", "closed", "waiting"]  # waiting: its Startbeleg waits
    last_number: int
    unit: UnitOut
    open_outage: OpenOutageOut | None
    reports_due: list[ReportDueOut]
    waiting_special: list[SpecialKind]
    unsigned_count: int
    open_checks: list[CheckOut]
    backup: BackupOut


class PrinterOut(_Out):
    state: Literal["ready", "offline", "error", "disabled"]
    queued: int
    last_error: str | None


class DiskOut(_Out):
    """The disk of the data directory: a full one stops every sale (503 storage)."""

    free_bytes: int
    total_bytes: int


class StatusOut(_Out):
    version: str
    time: dt.datetime
    registers: list[RegisterStatusOut]
    printer: PrinterOut
    disk: DiskOut


class _In(_Out):
    # as strict as a sale (agent.contract): "2026", "yes" or 1 is a mistake, not a year
    # or a boolean, and is refused naming the field (the published schema says so too)
    model_config = ConfigDict(strict=True)


# An operator's reference: the published schema says 1-200 characters; an empty or blank
# one is refused by check_reference with rule `required` (as on the command line), not by
# pydantic's min-length, so minLength is published without being enforced here.
def _reference() -> Any:
    return Field(max_length=REFERENCE_MAX_LENGTH, json_schema_extra={"minLength": 1})


class ReportIn(_In):
    """A FinanzOnline report made for an outage: its reference, and whether it is the
    report of the outage's end."""

    reference: str = _reference()
    end: bool = False


class CheckDoneIn(_In):
    """A Belegcheck (or FinanzOnline) check made: its reference, the year of the checked
    receipt (may be left out for the Startbeleg), its receipt number (``number``, as the
    check shows it: names one of several unit switches) and whether the check failed."""

    year: int | None = Field(None, ge=1, le=9999)
    number: int | None = Field(None, ge=1, le=2**63 - 1)  # SQLite INTEGER
    reference: str = _reference()
    failed: bool = False


class ZeroReceiptIn(_In):
    """What a zero receipt may carry: the caller's idempotency key, as a sale's (a retry
    with the same one returns the stored receipt instead of issuing another)."""

    request_id: RequestId | None = None


class ReprintOut(_Out):
    """A queued copy: the first reprint of a receipt is copy 1."""

    copy_number: int = Field(alias="copy")


class ApiBackend(Protocol):
    """What the API needs from the till. Errors are the agent's own (agent.errors)."""

    def issue(self, raw: bytes) -> Issued:
        """Issue (or find) the receipt of a raw sale; InvalidSale for a bad one."""
        ...

    def get(self, register: str, number: int) -> ReceiptResult:
        """A stored receipt; NotFound if there is none."""
        ...

    def zero_receipt(self, register: str, request_id: str | None = None) -> Issued:
        """Issue a Nullbeleg (or find the one of ``request_id``), after the remedy of
        unsigned receipts; WaitsForUnit when it must be signed and cannot be now."""
        ...

    def status(self) -> StatusOut: ...

    def metrics(self) -> str:
        """The Prometheus exposition (text format 0.0.4) of the till."""
        ...

    def outages(self) -> list[OutageOut]: ...

    def report_outage(self, outage_id: int, reference: str, *, end: bool) -> OutageOut:
        """Record a FinanzOnline report reference; NotFound or InvalidSale."""
        ...

    def record_check(self, register: str, kind: CheckKind, body: CheckDoneIn) -> CheckOut:
        """Record a check the operator made; NotFound or InvalidSale."""
        ...

    def reprint(self, register: str, number: int) -> int:
        """Queue a copy of a receipt on the printer; its copy number. NotFound, or
        FiscalError when there is no printer."""
        ...

    def has_register(self, register: str) -> bool:
        """Whether this till knows ``register`` (a 404 names the register or the thing
        of it the path names)."""
        ...


# the registers, then the ones whose Startbeleg waits (not created yet), each with its unit;
# the unit's certificate, NULL for the development unit (simulate): see _certified
_REGISTERS = (
    "SELECT s.id, s.state, s.last_number, s.unit,"
    " CASE WHEN coalesce(json_extract(u.config, '$.simulate'), 0) = 0"
    " THEN u.certificate_der END,"
    " s.last_state, s.unsigned FROM ("
    "  SELECT r.id, r.state, r.last_number, r.active_unit AS unit,"
    "  (SELECT signature_state FROM receipts WHERE register_id = r.id"
    "   ORDER BY number DESC LIMIT 1) AS last_state,"
    "  (SELECT count(*) FROM receipts x WHERE x.register_id = r.id"
    "   AND x.signature_state = 'unsigned' AND NOT EXISTS (SELECT 1 FROM receipt_resolutions z"
    "   WHERE z.register_id = x.register_id AND z.number = x.number)) AS unsigned"
    "  FROM registers r"
    "  UNION ALL"
    "  SELECT w.register_id, 'waiting', 0, json_extract(w.setup, '$.units[0]'), NULL, 0"
    "  FROM waiting_specials w WHERE w.kind = 'start' AND w.done_at IS NULL"
    "  AND w.register_id NOT IN (SELECT id FROM registers)"
    " ) s LEFT JOIN units u ON u.id = s.unit"
    " ORDER BY 1"
)
_WAITING = "SELECT register_id, kind FROM waiting_specials WHERE done_at IS NULL ORDER BY id"
_SPECIAL_KINDS: frozenset[str] = frozenset(get_args(SpecialKind))


def _unit_states(rows: Sequence[Any], outages: Mapping[str, OutageRecord]) -> dict[Any, UnitState]:
    """One state per unit, whichever register it is shown for (``rows``: those of
    ``_REGISTERS``; ``outages``: the open ones by register): ``down`` when an open outage
    is on it, or a register on it has one, its last receipt fallback-signed or its
    Startbeleg waiting; else ``up`` when a register on it has its last receipt signed;
    else ``unknown``. A closed register's last receipt (its Schlussbeleg, with the failure
    marker or not) says nothing of the unit since: it counts as ``unknown``."""
    rank: dict[UnitState, int] = {"unknown": 0, "up": 1, "down": 2}
    states: dict[Any, UnitState] = {outage.unit_id: "down" for outage in outages.values()}
    for register_id, state, _, unit_id, _, last_state, _ in rows:
        own: UnitState = "unknown"
        if state == "closed":
            pass  # decommissioned: it issues nothing more, the other registers tell
        elif register_id in outages or last_state == "fallback" or state == "waiting":
            own = "down"
        elif last_state == "signed":
            own = "up"
        if rank[own] >= rank[states.get(unit_id, "unknown")]:
            states[unit_id] = own
    return states


class ServiceBackend:
    """:class:`ApiBackend` over a receipt service.

    Args:
        service: the till's receipt service.
        thresholds: the outage escalation thresholds (for the 48-hour deadline).
        printer: the printer's state; without it the printer shows as ``disabled``.
        backups: the service's backup job, whose failures the status shows.
        spool_dir: the spool whose backlog the metrics show (None: no spool).
    """

    def __init__(
        self,
        service: ReceiptService,
        *,
        thresholds: Thresholds | None = None,
        printer: Callable[[], PrinterOut] | None = None,
        backups: DepBackups | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        self.service = service
        self.thresholds = thresholds or Thresholds()
        self.printer = printer
        self.backups = backups
        self.spool_dir = spool_dir
        self._started_at = process_start_time()

    def issue_sale(self, raw: bytes) -> ReceiptResult:
        """Issue the receipt of a raw sale (the spool handler)."""
        return self.service.issue(parse_sale(raw))

    def issue(self, raw: bytes) -> Issued:
        return self.service.issue_once(parse_sale(raw))

    def get(self, register: str, number: int) -> ReceiptResult:
        return self.service.get(register, number)

    def zero_receipt(self, register: str, request_id: str | None = None) -> Issued:
        """A Nullbeleg; while an outage is open, the signed Sammelbeleg that closes it;
        with ``request_id``, a repeat returns the stored one (``created`` false). The
        remedy of unsigned receipts comes first (:meth:`ReceiptService.zero_receipt`).

        Raises:
            NotFound: no such register.
            InvalidSale: ``request_id`` was used for another kind of receipt.
            WaitsForUnit: the Sammelbeleg must be signed and the unit still fails.
        """
        try:
            return self.service.zero_receipt(register, request_id)
        except InvalidSale as exc:
            if exc.rule == "register-unknown":
                raise NotFound(exc.message) from exc
            raise

    def status(self) -> StatusOut:
        now = self.service.clock.now()
        with self._read() as conn:
            read = self._read_status(conn, now)
        return self._status_out(read, now)

    def metrics(self) -> str:
        """The Prometheus exposition (:mod:`agent.metrics`): the status, read the same
        way, with what only this process knows (receipts committed, commit latency, the
        spool's backlog)."""
        now = self.service.clock.now()
        with self._read() as conn:
            read = self._read_status(conn, now)
        writer = self.service.db.write_connection()
        spool = None if self.spool_dir is None else spool_backlog(self.spool_dir, time.time())
        return render(
            MetricsSnapshot(
                status=self._status_out(read, now),
                window_s=self.thresholds.exceeded_hours * HOUR,
                probed_at=read.probed_at,
                receipts=self.service.issued.snapshot(),
                commit_buckets=list(writer.durable_buckets),
                commit_seconds=writer.durable_seconds,
                spool=spool,
                started_at=self._started_at,
            )
        )

    def _read_status(self, conn: sqlite3.Connection, now: dt.datetime) -> _StatusRead:
        """What the status shows from the till database, in one read transaction."""
        rows = conn.execute(_REGISTERS).fetchall()
        every = load_outages(conn)
        outages = {o.register_id: o for o in every if o.ended_at is None}
        failed = {
            o.id: self.service.outages.last_recovery_failure(conn, o) for o in outages.values()
        }
        probes = {o.id: _last_probe(conn, o) for o in outages.values()}
        waiting = _waiting(conn.execute(_WAITING).fetchall())
        checks: dict[str, list[CheckOut]] = {}
        for record in load_checks(conn, failed=True):
            checks.setdefault(record.register_id, []).append(check_out(record, now))
        queued = int(conn.execute(QUEUED_PRINTS).fetchone()[0])
        backups = backup_statuses(conn, now, self.backups.failures if self.backups else {})
        external = None if self.backups is None else self.backups.external
        unit_states = _unit_states(rows, outages)
        problems = {key: None if p is None else p.problem for key, p in probes.items()}
        registers = [
            self._register(
                tuple(row),
                outages.get(row[0]),
                waiting.get(row[0], []),
                now,
                failed,
                unit_state=unit_states[row[3]],
                problems=problems,
                checks=checks.get(row[0], []),
                backup=_backup_out(backups.get(row[0]), external),
                reports=_reports_due([o for o in every if o.register_id == row[0]], now),
            )
            for row in rows
        ]
        return _StatusRead(registers, queued, _probed_at(outages.values(), probes))

    def _status_out(self, read: _StatusRead, now: dt.datetime) -> StatusOut:
        printer = self.printer() if self.printer is not None else None
        usage = shutil.disk_usage(self.service.db.path.parent)
        return StatusOut(
            version=__version__,
            time=now,
            registers=read.registers,
            printer=printer or PrinterOut(state="disabled", queued=read.queued, last_error=None),
            disk=DiskOut(free_bytes=usage.free, total_bytes=usage.total),
        )

    def reprint(self, register: str, number: int) -> int:
        raise FiscalError("this till has no printer worker")

    def report_outage(self, outage_id: int, reference: str, *, end: bool) -> OutageOut:
        acknowledge_report(
            self.service.db.write_connection(), self.service.clock, outage_id, reference, end=end
        )
        return next(o for o in self.outages() if o.id == outage_id)

    def record_check(self, register: str, kind: CheckKind, body: CheckDoneIn) -> CheckOut:
        service = self.service
        record = record_check(
            service.db.write_connection(),
            service.clock,
            register,
            kind,
            body.year,
            body.reference,
            failed=body.failed,
            number=body.number,
        )
        return check_out(record, service.clock.now())

    def outages(self) -> list[OutageOut]:
        with self._read() as conn:
            records = load_outages(conn)
        return [outage_out(r) for r in records]

    def has_register(self, register: str) -> bool:
        """Initialized, or waiting for its Startbeleg: the registers a sale may name."""
        with self._read() as conn:
            try:
                register_row(conn, register)
            except InvalidSale:
                return False
            except WaitsForUnit:
                return True
        return True

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.service.db.read_connection()

    def _register(
        self,
        row: tuple[Any, ...],
        outage: OutageRecord | None,
        waiting: list[SpecialKind],
        now: dt.datetime,
        failed: dict[int, str | None],
        *,
        unit_state: UnitState,
        problems: dict[int, str | None],
        checks: list[CheckOut],
        backup: BackupOut,
        reports: list[ReportDueOut],
    ) -> RegisterStatusOut:
        register_id, state, last_number, unit_id, certificate, _, unsigned = row
        return RegisterStatusOut(
            register_id=register_id,
            state=state,
            last_number=last_number,
            unit=UnitOut(id=str(unit_id), state=unit_state, certified=_certified(certificate)),
            open_outage=None
            if outage is None
            else self._open_outage(outage, now, failed.get(outage.id), problems.get(outage.id)),
            reports_due=reports,
            waiting_special=_with_sammelbeleg(waiting) if outage is not None else waiting,
            unsigned_count=unsigned,
            open_checks=checks,
            backup=backup,
        )

    def _open_outage(
        self, outage: OutageRecord, now: dt.datetime, failed: str | None, problem: str | None
    ) -> OpenOutageOut:
        shown = outage_out(outage)  # its times as the list of outages shows them
        # the watch stores the age at its last tick; add the time since (never less)
        since_check = (now - dt.datetime.fromisoformat(outage.checked_at)).total_seconds()
        age = outage.age_seconds + max(0.0, since_check)
        # from the age shown (the boot clock's, as the alerts'), not started_at, which a
        # step of the wall clock moved; past the window: the moment it closed
        left = dt.timedelta(seconds=self.thresholds.exceeded_hours * HOUR - age)
        return OpenOutageOut(
            id=outage.id,
            started_at=shown.started_at,
            age_s=age,
            cause=outage.cause,
            affected=outage.affected,
            deadline_48h_at=now + left,
            report_due_at=shown.report_due_at,
            recovery_failed=failed,
            unit_problem=problem,
        )


@dataclass(frozen=True, slots=True)
class _Probe:
    """The last probe journaled into an open outage: when, and why it failed (None: the
    unit answered)."""

    at: dt.datetime
    problem: str | None


@dataclass(frozen=True, slots=True)
class _StatusRead:
    """What one read of the till database gives the status and the metrics: the
    registers as shown, the queued print jobs and, per unit, its latest probe."""

    registers: list[RegisterStatusOut]
    queued: int
    probed_at: dict[str, dt.datetime]


def _last_probe(conn: sqlite3.Connection, outage: OutageRecord) -> _Probe | None:
    """The last probe of the open ``outage``'s unit (its journaled ``outage.probe``),
    None when none was made. Probes are journaled only into the register's open outage,
    so its last one is the register's last; the journal is read backwards from its end,
    back to that probe (at most a backoff's worth)."""
    if outage.probe_attempts == 0:
        return None
    row = conn.execute(
        "SELECT at, data FROM journal WHERE kind = 'outage.probe' AND register_id = ?"
        " ORDER BY seq DESC LIMIT 1",
        (outage.register_id,),
    ).fetchone()
    if row is None:
        return None
    probe = json.loads(row[1])
    if probe.get("outage") != outage.id:
        return None
    problem = None if probe.get("ok") else str(probe.get("detail"))
    return _Probe(dt.datetime.fromisoformat(row[0]), problem)


def _probed_at(
    outages: Iterable[OutageRecord], probes: Mapping[int, _Probe | None]
) -> dict[str, dt.datetime]:
    """Per unit, the latest of the probes of the open ``outages`` on it."""
    latest: dict[str, dt.datetime] = {}
    for outage in outages:
        probe, seen = probes[outage.id], latest.get(outage.unit_id)
        if probe is not None and (seen is None or probe.at > seen):
            latest[outage.unit_id] = probe.at
    return latest


def _reports_due(outages: list[OutageRecord], now: dt.datetime) -> list[ReportDueOut]:
    """The reports ``outages`` owe, open or ended: each until its reference is recorded."""
    owed = []
    for outage in outages:
        for report, due, done in (
            ("outage", outage.report_due, outage.report_reference),
            ("end", outage.end_report_due, outage.end_report_reference),
        ):
            if due is not None and done is None:
                at = dt.datetime.fromisoformat(due)
                owed.append(
                    ReportDueOut(outage=outage.id, report=report, due_at=at, overdue=now > at)
                )
    return sorted(owed, key=lambda r: (r.due_at, r.outage, r.report))


def _backup_out(status: BackupStatus | None, external: bool | None) -> BackupOut:
    if status is None:  # a register whose Startbeleg waits: nothing to back up yet
        return _NO_BACKUP
    last, failure = status.last, status.failure
    return BackupOut(
        last=None
        if last is None
        else LastBackupOut(
            quarter=last.quarter, path=last.path, sha256=last.sha256, at=last.written_at
        ),
        overdue=status.overdue,
        failure=None
        if failure is None
        else BackupFailureOut(quarter=failure.quarter, error=failure.error, at=failure.at),
        external=external,
    )


def _certified(certificate: bytes | None) -> bool:
    """A certificate issued to the unit by someone else (a trust service provider): not
    a closed system's key (no certificate), not the development unit, not self-signed."""
    return certificate is not None and not is_self_signed(bytes(certificate))


def _waiting(rows: list[Any]) -> dict[str, list[SpecialKind]]:
    waiting: dict[str, list[SpecialKind]] = {}
    for register_id, kind in rows:
        if kind in _SPECIAL_KINDS:
            waiting.setdefault(register_id, []).append(cast(SpecialKind, kind))
        else:  # a kind this API does not know yet: better missing than a failed status
            log.warning("api: waiting special receipt of unknown kind %r", kind)
    return waiting


def _with_sammelbeleg(waiting: list[SpecialKind]) -> list[SpecialKind]:
    """An open outage waits for its Sammelbeleg, recorded as waiting or not."""
    return waiting if "sammelbeleg" in waiting else [*waiting, "sammelbeleg"]
