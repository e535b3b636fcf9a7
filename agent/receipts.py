"""The receipt service: turns sales into signed, chained, durably journaled receipts.

:class:`ReceiptService` is the public API: sales (concurrent ones share a group commit),
special receipts, waiting receipts, probes and recovery, month and year closings. The
write transactions and the durable path they hold (number, sign, store; DESIGN.md
invariant 1) are :class:`agent.issuing.Issuing`. What waited for a unit (the remedy of
unsigned receipts, waiting special receipts) is :mod:`agent.recovery`, which issues
through the same :class:`~agent.issuing.Issuing`; the rows it works on are in
:mod:`agent.remedy`, :mod:`agent.waiting` and :mod:`agent.registers`, the receipts in
:mod:`agent.receipt_records`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from agent.clock import Clock, JumpWatch, SystemClock, WallJump
from agent.closings import (
    CLOSING_NAMES,
    closing_kind,
    due_for,
    first_held,
    hand_closing_from,
    journal_hold,
    journaled_holds,
    next_closing_at,
    period_of,
    period_to_close,
)
from agent.contract import (
    ReceiptResult,
    Sale,
    parse_sale,
    sale_fingerprint,
    same_sale,
)
from agent.errors import (
    FiscalError,
    InvalidSale,
    RegisterRefused,
    RegisterStateError,
    SigningError,
    StorageError,
    WaitsForUnit,
)
from agent.issuing import Issuing
from agent.outage_watch import Thresholds
from agent.receipt_records import (
    KINDS,
    MUST_SIGN,
    ZERO,
    Draft,
    known_receipt,
    lost_answer,
    raise_if_lost,
    receipt_row,
)
from agent.receipt_view import Amounts, current_result
from agent.recovery import Recovery
from agent.registers import (
    START_SENT,
    RegisterSetup,
    check_setup,
    open_register,
    refuse_pending_start,
    setup_json,
)
from agent.remedy import current_version, unresolved
from agent.sale_draft import draft_for_sale
from agent.signing import SignatureUnit
from agent.signing.registry import UnitRegistry
from agent.waiting import (
    WAITING_FIELDS,
    open_waiting,
    record_waiting,
    waiting_done,
    waiting_periods,
    waiting_rows,
)
from storage.db import TillDB
from storage.group_commit import GroupCommit, PartlyCommitted

__all__ = [
    "KINDS",
    "MUST_SIGN",
    "PROBE_TARGETS",
    "Issued",
    "ReceiptService",
    "RegisterSetup",
]

_log = logging.getLogger(__name__)


# not frozen (nothing hashes or changes it): one per receipt, and a frozen __init__ sets
# each field through object.__setattr__, about four times slower
@dataclass(slots=True)
class Issued:
    """A receipt for a sale, and whether this call created it (``False``: a repeat)."""

    result: ReceiptResult
    created: bool


class ReceiptService:
    """Issues receipts for the registers of one till database.

    Args:
        db: the open till database (this process must hold the writer lock).
        units: the open signature units.
        clock: wall time for receipt dates; the outage watch ages outages by it too.
        sign_timeout: the deadline of every signing call, in seconds.
        thresholds: the outage watch's escalation levels (default: the legal 48 h, a week).
        closings_first: issue a register's due Monats-/Jahresbelege before its next sale
            (off only for a scenario replay, whose dates are the scenario's).
    """

    def __init__(
        self,
        db: TillDB,
        units: UnitRegistry,
        *,
        clock: Clock | None = None,
        sign_timeout: float = 3.0,
        thresholds: Thresholds | None = None,
        closings_first: bool = True,
    ) -> None:
        self.db = db
        self.units = units
        self.clock: Clock = clock or SystemClock()
        self.sign_timeout = sign_timeout
        # the write transactions and the durable path, shared with recovery
        self._issuing = issuing = Issuing(
            db, units, clock=self.clock, sign_timeout=sign_timeout, thresholds=thresholds
        )
        self.outages = issuing.outages
        self.issued = issuing.issued  # the receipts committed, counted (GET /metrics)
        # refusals are contained to their sale: they are raised before anything in memory
        # (the outage book) changes; anything else fails the whole group
        writer = issuing.writer
        self._group: GroupCommit[Issued] = GroupCommit(
            issuing.lock,
            issuing.transaction,
            writer.savepoint,
            (FiscalError, InvalidSale),
            lambda: writer.commits,  # a chain signing's intent commits the group so far
        )
        self._recovery = Recovery(issuing)  # the remedy and the waiting receipts
        # register -> when its next closing is due (a sale from then on issues it first)
        self._closings_first = issuing.closings_first = closings_first
        self._closing_due: dict[str, dt.datetime] = {}
        # forward jumps of the wall clock seen by this process: the closings they made due wait
        self._jumps = JumpWatch(self.clock)
        self._held: set[tuple[str, float]] = set()  # (register, jump's boot): journaled
        self._held_lock = threading.Lock()
        with db.read_connection() as conn:  # a restart in the same boot keeps them
            for register_id, jump in journaled_holds(conn, self.clock):
                self._jumps.resume(jump)
                self._held.add((register_id, jump.boot))
        # register -> why the configuration refuses its sales (set by the till service)
        self.refused_registers: dict[str, str] = {}

    # -- public API -----------------------------------------------------------------------

    def init_register(
        self,
        setup: RegisterSetup,
        *,
        receipt_id: str | None = None,
        issued_at: str | None = None,
        unit_position: int | None = None,
    ) -> ReceiptResult:
        """Create a register and issue its signed Startbeleg in one transaction.

        Args:
            setup: the new register.
            receipt_id: a scenario replay's receipt id (default: from the format).
            issued_at: a scenario replay's date (default: now, in the register's zone).
            unit_position: a scenario replay's unit (default: the first of ``setup``).

        A Startbeleg of the register that waits (``run``'s first start with the unit down)
        and was never sent to a chain service is done with the one issued now, in the same
        transaction; one that was sent is completed by :meth:`recover` only.

        Raises:
            InvalidSale: a bad id or format, or the register exists already.
            FiscalError: the unit cannot sign (the register is not created).
        """
        check_setup(setup)
        with self._issuing.transaction() as conn:
            refuse_pending_start(conn, setup.register_id)
            stamp = self._issuing.stamp_now(setup.timezone) if issued_at is None else issued_at
            result = self._issuing.start_in(
                conn, setup, stamp, receipt_id=receipt_id, unit_position=unit_position
            )
            waiting = open_waiting(conn, setup.register_id, "start", None)
            if result is not None and waiting is not None:  # superseded by this Startbeleg
                waiting_done(conn, waiting, result.number, self.clock.now().isoformat())
        if result is None:
            raise WaitsForUnit(START_SENT.format(register=setup.register_id))
        return result

    def issue(self, sale: Sale | bytes | str | dict[str, Any]) -> ReceiptResult:
        """Issue the receipt for a POS sale; a repeated ``request_id`` returns the stored one.

        Concurrent callers share commits (:class:`storage.group_commit.GroupCommit`): each
        returns only after the transaction holding its receipt is durable.

        Raises:
            InvalidSale: the sale breaks a rule (nothing was consumed).
            StorageError: the till database failed: nothing of the sale was stored, or
                (a chain unit's sale whose signing intent was committed first) it keeps
                its number and the same ``request_id`` gets its receipt.
        """
        return self.issue_once(sale).result

    def issue_once(self, sale: Sale | bytes | str | dict[str, Any]) -> Issued:
        """:meth:`issue`, telling whether this call created the receipt. Exact between
        concurrent callers: the lookup and the insert are in one write transaction."""
        if not isinstance(sale, Sale):
            sale = parse_sale(sale)
        register_id = sale.register_id
        sale_hash = sale_fingerprint(sale)
        parsed = sale
        refused = self.refused_registers.get(register_id) if self.refused_registers else None
        checks = _CLOSING_CHECKS if self._closings_first else 0

        def work(conn: sqlite3.Connection) -> Issued:
            # one query for the register and whether the request has its receipt already
            reg = conn.execute(_SALE_REGISTER, (register_id, parsed.request_id)).fetchone()
            stored = None
            if reg is None or reg["request_receipt"] is not None:
                stored = _by_request(conn, register_id, parsed.request_id)
            if stored is not None:
                if not (same_sale(stored["sale_hash"], parsed) or _zero_asked(stored, parsed)):
                    raise InvalidSale(
                        "request_id",
                        "request-id-reused",
                        "this request_id was already used for a different sale: "
                        + _stored_receipt(stored),
                    )
                if _zero_asked(stored, parsed):  # as the zero-receipt endpoint answers it
                    stored = _closed_by(conn, stored)
                return Issued(current_result(conn, current_version(conn, stored)), created=False)
            if refused is not None:  # (a retry above still gets its stored receipt)
                raise RegisterRefused(refused)
            due_at = self._closing_due.get(register_id)
            if checks and due_at is not None and self.clock.now() >= due_at:
                raise _ClosingDue(register_id)  # it fell due while this sale waited
            if reg is None or reg["state"] != "active":
                reg = open_register(conn, register_id)  # refuses it as it refuses the sale
            draft = draft_for_sale(conn, reg, parsed, sale_hash)
            return Issued(self._issuing.issue_in(conn, reg, draft), created=True)

        while True:
            if checks:
                self._close_due(register_id)
            try:
                return self._group.run(work)
            except _ClosingDue:
                checks -= 1  # (a clock that keeps the closing due: the last try issues)
                self._closing_due.pop(register_id, None)
            except PartlyCommitted as exc:  # its chain signing's intent is stored
                raise StorageError(_intent_kept(exc.failure, parsed.request_id)) from exc

    def issue_special(
        self,
        register_id: str,
        kind: str,
        *,
        receipt_id: str | None = None,
        issued_at: str | None = None,
        unit_position: int | None = None,
        amounts: Amounts = ZERO,
        request_id: str | None = None,
        confirmed: bool = False,
        failed_ok: bool = False,
    ) -> ReceiptResult:
        """Issue a receipt the agent makes itself: null, monthly, yearly, closing, Sammelbeleg.

        A Monats- or Jahresbeleg closes the current month in the register's time zone, as
        if :meth:`run_closings` had issued it: it records the period (so the job does not
        issue a second one) and fulfils a Jahresbeleg waiting for that month. While the
        clock may have reached that month's last day only through a jump that has not
        settled, it is refused unless ``confirmed`` (the operator vouches for the clock).
        A Schlussbeleg issues the months before it first, held or not (it is confirmed).
        With ``failed_ok`` a Schlussbeleg the unit does not sign (or that meets an open
        outage: the unit is not asked) carries the failure marker and ends that outage
        (:meth:`agent.outages.OutageBook.decommissioned`); without, it waits.
        ``amounts`` and the kinds standard/storno/training serve the scenario replay.

        Raises:
            RegisterStateError: that month is closed already, or an earlier one is not, or
                its closing waits for the clock to settle.
        """
        if kind not in KINDS or kind == "start":
            raise InvalidSale("kind", "allowed-values", f"cannot issue a {kind!r} receipt here")
        if kind == "closing" and self._closings_first:
            self._close_due(register_id, force=True)  # the months before it are closed first
        with self._issuing.transaction() as conn:
            reg = open_register(conn, register_id)
            period = None
            if kind in ("monthly", "yearly"):
                period = self._hand_period(conn, reg, kind, confirmed=confirmed)
            draft = Draft(
                register_id,
                kind,
                amounts=amounts,
                receipt_id=receipt_id,
                issued_at=issued_at,
                unit_position=unit_position,
                request_id=request_id,
                period=period,
                failed_ok=failed_ok,
            )
            result = self._issuing.issue_in(conn, reg, draft)
            if period is not None and result.signature_state == "signed":
                waiting = open_waiting(conn, register_id, "yearly", period)
                if waiting is not None:
                    waiting_done(conn, waiting, result.number, self.clock.now().isoformat())
        raise_if_lost(result)
        return result

    def check_special(self, register_id: str, kind: str, *, confirmed: bool = False) -> None:
        """Raise now, issuing nothing, what :meth:`issue_special` would refuse a Monats- or
        Jahresbeleg of ``register_id`` for (another kind: an unknown or closed register
        only). The command line asks before an open outage's Sammelbeleg asks the unit:
        a closing refused anyway leaves no Sammelbeleg it did not ask for."""
        with self.db.read_connection() as conn:
            reg = open_register(conn, register_id)
            if kind in ("monthly", "yearly"):
                self._hand_period(conn, reg, kind, confirmed=confirmed)

    def _hand_period(
        self, conn: sqlite3.Connection, reg: sqlite3.Row, kind: str, *, confirmed: bool
    ) -> str:
        """The month a hand-issued Monats-/Jahresbeleg of ``reg`` closes now; raises
        :class:`RegisterStateError` as :meth:`issue_special` documents."""
        waits = waiting_periods(conn, reg["id"], "yearly")
        period = period_to_close(reg, kind, self._look(), waits)
        if not confirmed:
            self._refuse_held(reg, kind, period)
        return period

    def zero_receipt(self, register_id: str, request_id: str | None = None) -> Issued:
        """A Nullbeleg; while an outage is open, the signed Sammelbeleg that closes it.

        Decided in the transaction that issues it: the probe's recovery may close the
        outage just before, and a Sammelbeleg after it would close nothing. With a
        ``request_id`` (the caller's idempotency key, as a sale's) a repeat returns the
        stored zero receipt instead of issuing another.

        While unsigned receipts of the register wait for their remedy, it is issued as
        recovery issues it (DESIGN.md invariant 5, :meth:`agent.recovery.Recovery.remedy`):
        those the chain service has are adopted, then the signed Nullbeleg, the Sammelbeleg
        and the reissued sales; the zero receipt asked for is that Sammelbeleg, or that
        Nullbeleg when no outage is open (a remedy that issues neither: a Nullbeleg after it),
        answered once it is committed signed, whatever a later receipt of the remedy met
        (a lost one waits for recovery). ``request_id`` goes on the remedy's first receipt:
        a retry issues nothing more, and gets the Sammelbeleg that closed the outage.

        Raises:
            InvalidSale: ``request_id`` names a receipt that is no zero receipt.
            RegisterRefused: the configuration refuses the register's receipts (a
                Sammelbeleg its open outage needs is still issued).
            WaitsForUnit: the Sammelbeleg (or the remedy's Nullbeleg) must be signed and
                the unit still fails, or the chain service cannot be asked about the
                unsigned receipts.
        """
        remedied = False
        while True:
            with self._issuing.transaction() as conn:
                found = self._zero_in(conn, register_id, request_id, remedied=remedied)
            if found is not None:
                break
            result = self._zero_remedy(register_id, request_id)
            if result is not None:
                return Issued(result, created=True)
            remedied = True  # nothing in it stands for the request: a Nullbeleg, or the
            # receipt a concurrent retry of the request got
        issued, waits = found
        if waits:
            raise_if_lost(issued.result)
        return issued

    def _zero_in(
        self,
        conn: sqlite3.Connection,
        register_id: str,
        request_id: str | None,
        *,
        remedied: bool,
    ) -> tuple[Issued, bool] | None:
        """:meth:`zero_receipt` in its transaction: the stored one of ``request_id``, or the
        zero receipt issued now, and whether a lost one waits; ``None`` when unsigned
        receipts wait for their remedy (unless ``remedied``: it ran and issued nothing
        for the request)."""
        stored = None if request_id is None else _by_request(conn, register_id, request_id)
        if stored is not None:
            if not _zero_again(stored):
                raise InvalidSale(
                    "request_id",
                    "request-id-reused",
                    f"this request_id was already used for a {stored['kind']} receipt "
                    f"with other content: {_stored_receipt(stored)}",
                )
            # a lost Sammelbeleg is replaced by recovery: the retry gets what stands now,
            # and waits only while the outage it was asked for is still open
            stands = current_version(conn, _closed_by(conn, stored))
            issued = Issued(current_result(conn, stands), created=False)
            return issued, self._issuing.outages.is_open(register_id)
        reg = open_register(conn, register_id)
        kind = "sammelbeleg" if self._issuing.outages.is_open(register_id) else "null"
        if kind == "null" and register_id in self.refused_registers:
            raise RegisterRefused(self.refused_registers[register_id])
        if not remedied and unresolved(conn, register_id):
            return None
        draft = Draft(register_id, kind, request_id=request_id)
        return Issued(self._issuing.issue_in(conn, reg, draft), created=True), True

    def _zero_remedy(self, register_id: str, request_id: str | None) -> ReceiptResult | None:
        """The remedy a zero receipt issues first (:meth:`agent.recovery.Recovery.remedy`);
        the receipt of it that stands for the request, ``None`` if none does."""
        try:
            issued = self._recovery.remedy(register_id, request_id)
        except SigningError as exc:
            raise WaitsForUnit(
                f"register {register_id} has unsigned receipts whose remedy comes before"
                f" a zero receipt, and the chain service cannot be asked about them: {exc}"
            ) from exc
        if request_id is not None:
            with self.db.read_connection() as conn:
                row = _by_request(conn, register_id, request_id)
            if row is None or row["number"] not in {r.number for r in issued}:
                return None  # a retry of the request took it meanwhile: it is found
        stands = next((r for r in issued if r.kind == "sammelbeleg"), None)
        stands = stands or next((r for r in issued if r.kind == "null"), None)
        if stands is None:
            for result in issued:  # a lost answer before any zero receipt: none stands
                raise_if_lost(result, always=True)
            return None
        raise_if_lost(stands, always=True)  # committed signed: what follows it may wait
        return stands

    def get(self, register_id: str, number: int) -> ReceiptResult:
        """The stored receipt ``number`` of ``register_id`` as it stands now (an unsigned
        one with its resolution, :func:`agent.receipt_view.current_result`); raises
        ``NotFound``."""
        with self.db.read_connection() as conn:
            return current_result(conn, known_receipt(conn, register_id, number))

    def row(self, register_id: str, number: int) -> Any:
        """The ``receipts`` row (a ``sqlite3.Row``) of receipt ``number``; raises ``NotFound``."""
        with self.db.read_connection() as conn:
            return known_receipt(conn, register_id, number)

    # -- sales ----------------------------------------------------------------------------

    # -- waiting special receipts ---------------------------------------------------------

    def init_register_or_wait(self, setup: RegisterSetup) -> ReceiptResult | None:
        """Like :meth:`init_register`, but a unit that cannot sign now makes the Startbeleg
        wait (journaled, with an alert) instead of failing; ``None`` then. The register is
        created with its Startbeleg when the unit is back (:meth:`recover`)."""
        try:
            return self.init_register(setup)
        except WaitsForUnit as exc:
            self._record_waiting(setup.register_id, "start", None, str(exc), setup_json(setup))
            return None

    def request_special(
        self, register_id: str, kind: str, *, period: str | None = None
    ) -> ReceiptResult | None:
        """Issue a special receipt now, or (Jahres-, Sammelbeleg) let it wait for the unit.

        Returns ``None`` when it waits; it is then visible in :meth:`waiting` and issued
        by :meth:`recover`. One that waits already (since the caller looked, too) is not
        sent again: ``None``. Raises :class:`_ClosedMeanwhile` (nothing issued) when
        ``period`` was closed since the caller looked: the recovery of a waiting
        Jahresbeleg runs in another thread.
        """
        try:
            with self._issuing.transaction() as conn:
                if period is not None and open_waiting(conn, register_id, kind, period):
                    return None  # recovery issues it (never a second Jahresbeleg)
                reg = open_register(conn, register_id)
                if period is not None and (reg["last_closing"] or "") >= period:
                    raise _ClosedMeanwhile(period)
                result = self._issuing.issue_in(conn, reg, Draft(register_id, kind, period=period))
        except WaitsForUnit as exc:
            self._record_waiting(register_id, kind, period, str(exc))
            return None
        return None if lost_answer(result) else result  # a lost one waits (recorded with it)

    def _record_waiting(
        self,
        register_id: str,
        kind: str,
        period: str | None,
        reason: str,
        setup: str | None = None,
    ) -> None:
        with self._issuing.transaction() as conn:
            now = self.clock.now().isoformat()
            record_waiting(conn, register_id, kind, period, reason, now, setup)

    def waiting(self, register_id: str | None = None) -> list[dict[str, Any]]:
        """Special receipts waiting for their unit (oldest first)."""
        with self.db.read_connection() as conn:
            rows = waiting_rows(conn, register_id)
        return [{k: row[k] for k in WAITING_FIELDS} for row in rows]

    def unsigned(self, register_id: str | None = None) -> list[dict[str, Any]]:
        """``unsigned`` receipts not yet remedied (adopted or superseded)."""
        with self.db.read_connection() as conn:
            rows = unresolved(conn, register_id)
        return [
            {"register": r["register_id"], "number": r["number"], "receipt_id": r["receipt_id"]}
            for r in rows
        ]

    # -- recovery -------------------------------------------------------------------------

    def probe_targets(self) -> list[str]:
        """Registers that wait for their unit: an open outage, a waiting special receipt or
        an unsigned receipt to remedy."""
        with self.db.read_connection() as conn:
            rows = conn.execute(PROBE_TARGETS).fetchall()
        return sorted({*self.outages.open_registers(), *(str(r[0]) for r in rows)})

    def unit_of(self, register_id: str) -> SignatureUnit:
        """The active unit of a register, or of a register whose Startbeleg waits."""
        return self._issuing.unit_of(register_id)

    def record_probe(self, register_id: str, ok: bool, detail: str) -> None:
        """Record a probe of the register's unit in its open outage. A failed probe of a
        register that waits for its unit and has no outage open opens one (DESIGN.md
        invariant 4); a register whose Startbeleg waits has none to open (it does not
        exist yet: the wait is its record)."""
        with self._issuing.transaction() as conn:
            if not ok and not self.outages.is_open(register_id):
                reg = conn.execute(
                    "SELECT active_unit FROM registers WHERE id = ? AND state = 'active'",
                    (register_id,),
                ).fetchone()
                if reg is not None:
                    self.outages.open(
                        conn,
                        register_id=register_id,
                        unit_id=reg[0],
                        cause=detail,
                        number=None,
                        at=self.clock.now(),
                    )
            if self.outages.is_open(register_id):
                self.outages.probed(conn, register_id, ok, detail, self.clock.now())

    def recover(self, register_id: str) -> list[ReceiptResult] | None:
        """Everything that waited for the unit of ``register_id``, once it answers again,
        in the order :meth:`agent.recovery.Recovery.recover` describes.

        Returns the receipts issued (``[]``: nothing waited), or ``None`` when the unit
        still cannot sign or be asked (everything keeps waiting).
        """
        return self._recovery.recover(register_id)

    # -- month and year closings ----------------------------------------------------------

    def run_closings(self) -> list[ReceiptResult]:
        """Issue every Monats-/Jahresbeleg that is due, in the register's time zone.

        A month's closing is due from 23:59 of its last day; months the till was off for
        are caught up in order. December's is the Jahresbeleg: it must be signed and
        waits for the unit, issued by :meth:`recover`; the later months' Monatsbelege do
        not wait behind it (:meth:`_close_register`). A sale does not wait for this job:
        it issues its register's due closings first (:meth:`issue`).
        """
        issued: list[ReceiptResult] = []
        now = self._look()
        with self.db.read_connection() as conn:
            registers = conn.execute(
                _CLOSING_ROW + " WHERE state = 'active' ORDER BY id"
            ).fetchall()
        for reg in registers:
            self._closing_due[reg["id"]] = self._close_register(reg, issued, now)
        return issued

    def _close_due(self, register_id: str, *, force: bool = False) -> None:
        """Issue ``register_id``'s due closings unless none can be due yet (the time of
        the next one is remembered): a sale of a new month never comes before the closing
        of the month before it, which is the counter at that month's end (rksv.md 6).
        ``force``: look now, and issue what a jump of the clock holds too."""
        now = self._look()
        due_at = self._closing_due.get(register_id)
        if not force and due_at is not None and now < due_at:
            return
        with self.db.read_connection() as conn:
            reg = conn.execute(_CLOSING_ROW + " WHERE id = ?", (register_id,)).fetchone()
        if reg is None:  # an unknown register: the sale is refused for it
            return
        if reg["state"] != "active":  # closed: nothing is issued on it any more
            self._closing_due[register_id] = _NEVER
            return
        self._closing_due[register_id] = self._close_register(reg, [], now, hold=not force)

    def _look(self) -> dt.datetime:
        """The wall time now. A jump of the wall clock since the last look (either way)
        makes every register's next closing be looked up again."""
        now, jumped = self._jumps.look()
        if jumped:
            self._closing_due.clear()
        return now

    def _close_register(
        self, reg: sqlite3.Row, issued: list[ReceiptResult], now: dt.datetime, *, hold: bool = True
    ) -> dt.datetime:
        """Issue the closings of ``reg`` due at ``now`` (appended to ``issued``); when to
        look again.

        A Jahresbeleg that waits for the unit, since earlier or from now on, settles its
        month here: recovery issues it. The months after it are closed on time all the
        same, their Monatsbelege with the failure marker while the unit is down: only the
        Jahresbeleg must be signed (rksv.md 5, which zero receipts may carry the marker).
        The closings that fell due only through a jump of the wall clock not yet settled
        (``hold``) wait: looked at again when it has.
        """
        with self.db.read_connection() as conn:
            waits = waiting_periods(conn, reg["id"], "yearly")
        due = due_for(reg, now)
        held = first_held(due, reg["timezone"], self._jumps) if hold else None
        last = reg["last_closing"]
        for period in due if held is None else due[: held[0]]:
            if period not in waits:
                self._close_period(reg["id"], period, issued)
            last = period
        if held is not None:
            index, jump = held
            settled = now + dt.timedelta(seconds=self._jumps.settles_in(jump))
            self._hold(reg["id"], due[index:], jump, settled)
            return settled
        first = period_of(reg["created_at"], reg["timezone"])
        return next_closing_at(last, first, reg["timezone"])

    def _hold(
        self, register_id: str, periods: list[str], jump: WallJump, settled: dt.datetime
    ) -> None:
        """Journal and log (ERROR) once per jump and register that ``periods``' closings
        wait for ``jump`` to settle (about ``settled`` on the wall clock)."""
        with self._held_lock:
            if (register_id, jump.boot) in self._held:
                return
            with self._issuing.transaction() as conn:
                until = settled.isoformat()
                journal_hold(conn, register_id, periods, jump, until, boot_id=self.clock.boot_id)
            self._held.add((register_id, jump.boot))
        _log.error(
            "register %s: the %s fell due only through a jump of the wall clock (%+.0f s,"
            " %s to %s): not issued before %s on this clock (the jump an hour old); sales go"
            " on, and what the clock then still says is due is issued",
            register_id,
            ", ".join(_closing_name(p) for p in periods),
            jump.seconds,
            jump.before.isoformat(),
            jump.after.isoformat(),
            settled.isoformat(),
        )

    def _refuse_held(self, reg: sqlite3.Row, kind: str, period: str) -> None:
        """Refuse a hand-issued closing of ``period`` that the clock may have reached only
        through a jump not yet settled: seen by this process, or journaled in this boot by
        an earlier one (the service, when this is the command line's process), which this
        service took up when it started."""
        jump = self._jumps.holding(hand_closing_from(period, reg["timezone"]))
        if jump is None:
            return
        raise RegisterStateError(
            f"register {reg['id']}: the {CLOSING_NAMES[kind]} of {period} is not issued: the"
            f" wall clock jumped {jump.seconds:+.0f} s (to {jump.after.isoformat()}) less than"
            " an hour ago, and a closing the clock reached only through a jump waits until it"
            " has settled; check the date and confirm it with --yes [clock-jump-hold]"
        )

    def _close_period(self, register_id: str, period: str, issued: list[ReceiptResult]) -> None:
        """Issue ``period``'s closing (appended to ``issued``) unless it waits for the unit
        now or was closed meanwhile (e.g. the probe's recovery issued the waiting
        Jahresbeleg in its thread): its month is settled either way."""
        with contextlib.suppress(_ClosedMeanwhile):
            result = self.request_special(register_id, closing_kind(period), period=period)
            if result is not None:
                issued.append(result)


# run at least once a second, also when idle: ``signature_state = 'unsigned'`` reads
# ix_receipts_unsigned (0009), the few unsigned receipts, not the whole history
PROBE_TARGETS = (
    "SELECT register_id FROM waiting_specials WHERE done_at IS NULL UNION"
    " SELECT r.register_id FROM receipts r LEFT JOIN receipt_resolutions x"
    " ON x.register_id = r.register_id AND x.number = r.number"
    " WHERE r.signature_state = 'unsigned' AND x.number IS NULL"
)
_CLOSING_ROW = "SELECT id, state, timezone, created_at, last_closing FROM registers"
# a sale's register row (as open_register reads it) and the id of the receipt already
# issued for its request_id (NULL: none), read together: the sale path's first query
_SALE_REGISTER = (
    "SELECT *, (SELECT id FROM receipts WHERE register_id = ?1 AND request_id = ?2)"
    " AS request_receipt FROM registers WHERE id = ?1"
)
_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


def _closing_name(period: str) -> str:
    """``period``'s closing as the log names it: "Monatsbeleg 2026-11"."""
    return f"{CLOSING_NAMES[closing_kind(period)]} {period}"


class _ClosingDue(FiscalError):
    """A register's closing fell due while a sale waited for the write transaction: the
    sale (nothing of it written) goes again, after the closing."""


_CLOSING_CHECKS = 3  # looks for a due closing per sale; the last try issues the sale anyway


class _ClosedMeanwhile(Exception):
    """The month a closing was asked for is closed already (by another thread)."""


def _zero_asked(stored: sqlite3.Row, sale: Sale) -> bool:
    """A ``kind: null`` sale repeating a request the zero-receipt endpoint answered (with
    a Nullbeleg, or the Sammelbeleg of an open outage): the same request, its receipt. The
    endpoint takes nothing but the request_id, so a null sale carrying more (a cashier) is
    another request (a null sale has no lines, payments or voids: parse_sale refuses them)."""
    return (
        stored["sale_hash"] is None
        and stored["kind"] in _ZERO_KINDS
        and sale.kind == "null"
        and sale.cashier is None
    )


def _zero_again(stored: sqlite3.Row) -> bool:
    """A zero-receipt request repeating ``stored``'s: a zero receipt it issued, or a
    ``kind: null`` sale that carried nothing but what the endpoint takes."""
    if stored["kind"] not in _ZERO_KINDS:
        return False
    if stored["sale_hash"] is None:
        return True
    bare = {"request_id": stored["request_id"], "register": stored["register_id"], "kind": "null"}
    return same_sale(stored["sale_hash"], parse_sale(bare))


def _intent_kept(failure: str, request_id: str) -> str:
    """The answer to a sale whose group failed (``failure``) after its chain signing's
    intent was committed: the sale keeps its number, and the next write transaction
    stores its receipt as a lost answer would (:func:`agent.interrupted.store_interrupted`)."""
    return (
        f"{failure}; this sale's signing intent for the chain service was committed before"
        " that, so the sale keeps its receipt number: its receipt is stored unsigned with"
        " the till's next write, until the service answers. Send the sale again with"
        f" request_id {request_id!r} to get it"
    )


def _stored_receipt(stored: sqlite3.Row) -> str:
    """The receipt a request_id names, for a refusal: the POS can look it up."""
    number, register, receipt_id = stored["number"], stored["register_id"], stored["receipt_id"]
    return f'receipt {number} of register {register} (receipt_id "{receipt_id}")'


_ZERO_KINDS = ("null", "sammelbeleg")


# an outage of the register not closed by a Sammelbeleg before a receipt (one a failed
# probe opened may take a later receipt as its first): (register, number)
_MAY_HAVE_BEEN_OPEN = (
    "SELECT 1 FROM outages WHERE register_id = ?"
    " AND (sammelbeleg_number IS NULL OR sammelbeleg_number > ?) LIMIT 1"
)
# the register's last outage opened before a journal seq: (register, seq)
_OPENED_BEFORE = (
    "SELECT json_extract(data, '$.outage') FROM journal WHERE register_id = ?"
    " AND kind = 'outage.opened' AND seq < ? ORDER BY seq DESC LIMIT 1"
)
# that outage closed before the seq: (register, seq, outage)
_CLOSED_BEFORE = (
    "SELECT 1 FROM journal WHERE register_id = ? AND kind = 'outage.closed' AND seq < ?"
    " AND json_extract(data, '$.outage') = ?"
)


def _closed_by(conn: sqlite3.Connection, stored: sqlite3.Row) -> Any:
    """The receipt that answers a zero receipt's retry: for a remedy's Nullbeleg issued
    inside an outage (it holds the request_id, :meth:`Recovery.remedy`), the Sammelbeleg
    that closed that outage; else ``stored``.

    Raises:
        WaitsForUnit: that outage is still open (a receipt of the remedy lost its answer).
    """
    if stored["kind"] != "null" or stored["sale_hash"] is not None:
        return stored  # a sale's Nullbeleg, or no Nullbeleg
    # the outage open when it was stored: the journal's last opened before it, not closed
    # before it (one a failed probe opened has no first receipt); the journal (no index
    # but its seq) is read only when the outages show one that may have been open then
    register_id, number, seq = stored["register_id"], stored["number"], stored["journal_seq"]
    if not conn.execute(_MAY_HAVE_BEEN_OPEN, (register_id, number)).fetchone():
        return stored
    opened = conn.execute(_OPENED_BEFORE, (register_id, seq)).fetchone()
    outage = None
    if (
        opened is not None
        and not conn.execute(_CLOSED_BEFORE, (register_id, seq, opened[0])).fetchone()
    ):
        outage = conn.execute(
            "SELECT ended_at, sammelbeleg_number FROM outages WHERE id = ?", (opened[0],)
        ).fetchone()
    if outage is None or (outage["sammelbeleg_number"] is None and outage["ended_at"]):
        return stored  # issued outside an outage, or in one a Schlussbeleg ended
    if outage["sammelbeleg_number"] is None:
        raise WaitsForUnit(
            f"zero receipt {stored['number']} is the first receipt of the remedy this request"
            " issued; the Sammelbeleg that closes the outage waits for the unit"
        )
    return receipt_row(conn, stored["register_id"], outage["sammelbeleg_number"])


def _by_request(conn: sqlite3.Connection, register_id: str, request_id: str) -> Any:
    """The receipt of ``register_id`` issued for ``request_id`` (a row), or ``None``."""
    return conn.execute(
        "SELECT * FROM receipts WHERE register_id = ? AND request_id = ?",
        (register_id, request_id),
    ).fetchone()
