"""The receipt service: turns sales into signed, chained, durably journaled receipts.

The durable order (DESIGN.md invariant 1) is the shape of :meth:`ReceiptService._issue_in`:
validate -> ``BEGIN IMMEDIATE`` -> allocate the number -> sign (or fallback) -> insert
receipt and journal event, update the register -> ``COMMIT`` (WAL, synchronous=FULL) ->
return. Nothing is returned, printed or acknowledged before the commit; a crash before it
leaves no trace, because the number is allocated inside the transaction.

The service owns the write transactions (one at a time, concurrent sales share a group
commit) and that durable path. What waited for a unit (the remedy of unsigned receipts,
waiting special receipts, chain signings a dead process left) is :mod:`agent.recovery`,
which issues through it; the rows it works on are in :mod:`agent.remedy`,
:mod:`agent.waiting` and :mod:`agent.registers`, the receipts in
:mod:`agent.receipt_records`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.at_rksv import (
    AUSTRIAN_ZONES,
    FALLBACK_SIGNATURE,
    REGISTER_ID_RULE,
    STORNO_MARKER,
    TRAINING_MARKER,
    Payload,
    cents_to_amount,
    chain_value,
    encrypt_counter,
    is_register_id,
    signing_input,
)
from agent.checks import CHECK_KINDS, record_due
from agent.clock import Clock, SystemClock
from agent.closings import due_periods, period_of, period_to_close
from agent.contract import (
    ReceiptResult,
    Sale,
    line_total_cents,
    parse_sale,
    sale_fingerprint,
    same_sale,
    scaled,
)
from agent.errors import (
    FiscalError,
    InvalidSale,
    NotFound,
    OutcomeUnknown,
    SigningError,
    StorageError,
    WaitsForUnit,
)
from agent.outage_watch import OutageWatch, Thresholds
from agent.outages import OutageBook
from agent.receipt_records import (
    COUNTED,
    KINDS,
    MUST_SIGN,
    ZERO,
    Draft,
    Stored,
    check_id,
    known_receipt,
    lost_answer,
    raise_if_lost,
    receipt_event,
    receipt_row,
    stored_lines,
    stored_receipt,
    sum_by_vat,
)
from agent.receipt_view import AMOUNT_COLUMNS, Amounts, result_from_parts, result_from_row
from agent.recovery import Recovery
from agent.registers import (
    CLOSING_SENT,
    START_SENT,
    RegisterSetup,
    check_new_register,
    create_register,
    open_register,
    refuse_pending_start,
    register_row,
    setup_json,
)
from agent.remedy import current_version, supersede_lost, unresolved
from agent.signing import SignatureUnit, sign_verified
from agent.signing.registry import UnitRegistry
from agent.waiting import (
    WAITING_FIELDS,
    any_waiting,
    open_waiting,
    record_waiting,
    start_waits,
    waiting_done,
    waiting_in,
    waiting_rows,
)
from storage.db import TillDB
from storage.group_commit import GroupCommit
from storage.journal import append_event, canonical_json

__all__ = [
    "KINDS",
    "MUST_SIGN",
    "Issued",
    "ReceiptService",
    "RegisterSetup",
]

_log = logging.getLogger(__name__)
_INSERT_RECEIPT = (
    "INSERT INTO receipts (register_id, number, receipt_id, kind, request_id, sale_hash,"
    " issued_at, amount_normal, amount_reduced1, amount_reduced2, amount_zero, amount_special,"
    " turnover_cents, jws, signature_state, unit_id, voids_number, document, journal_seq)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_REGISTER = (
    "UPDATE registers SET last_number = ?, turnover_cents = ?, last_jws = ?,"
    " last_issued_at = ?, state = ? WHERE id = ?"
)
# a chain signing's intent: called with None before the request leaves (commit it), and
# with the refusal when the service answered that it signed nothing (void it)
_Intent = Callable[[SigningError | None], None]


@dataclass(frozen=True, slots=True)
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
    """

    def __init__(
        self,
        db: TillDB,
        units: UnitRegistry,
        *,
        clock: Clock | None = None,
        sign_timeout: float = 3.0,
        thresholds: Thresholds | None = None,
    ) -> None:
        self.db = db
        self.units = units
        self.clock: Clock = clock or SystemClock()
        self.sign_timeout = sign_timeout
        self._writer = db.write_connection()
        self._lock = threading.RLock()
        # refusals are contained to their sale: they are raised before anything in memory
        # (the outage book) changes; anything else fails the whole group
        self._group: GroupCommit[Issued] = GroupCommit(
            self._lock, self._transaction, self._writer.savepoint, (FiscalError, InvalidSale)
        )
        # ticked by the running agent, and ages an outage as its Sammelbeleg closes it
        watch = OutageWatch(self._writer, self.clock, thresholds)
        with self._writer.transaction() as conn:
            self.outages = OutageBook(conn, watch)
        self._recovery = Recovery(self)  # the remedy, waiting receipts, interrupted signings
        # an intent left by a transaction that rolled back after committing it
        self._intent_unsettled = True  # and at start: one left by a process that died
        with self._transaction(settle_now=False):
            pass

    @contextmanager
    def _transaction(self, *, settle_now: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction whose in-memory outage changes follow its fate.

        It first stores what an earlier one left behind
        (:meth:`Recovery.store_interrupted`); after a refusal (``settle_now``) that happens at
        once, in a transaction of its own.
        """
        with self._lock:  # settle() must see only this transaction's outage changes
            try:
                with self._writer.transaction() as conn:
                    if self._intent_unsettled:
                        self._recovery.store_interrupted(conn)
                    yield conn
            except BaseException as exc:
                self.outages.settle(committed=False)
                if settle_now and self._intent_unsettled and isinstance(exc, FiscalError):
                    # e.g. a Schlussbeleg that now waits; if this fails, the next write retries
                    with (
                        contextlib.suppress(FiscalError, StorageError),
                        self._transaction(settle_now=False),
                    ):
                        pass
                raise
            self.outages.settle(committed=True)
            self._intent_unsettled = False

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

        Raises:
            InvalidSale: a bad id or format, or the register exists already.
            FiscalError: the unit cannot sign (the register is not created).
        """
        _check_setup(setup)
        replay = receipt_id is not None or issued_at is not None or unit_position is not None
        with self._transaction() as conn:
            if not replay:
                refuse_pending_start(conn, setup.register_id)
                result = self._start_in(conn, setup, self._stamp_now(setup.timezone))
            else:  # a scenario replay decides the receipt; no answer is lost there
                create_register(conn, setup, self.clock.now().isoformat())
                reg = register_row(conn, setup.register_id)
                draft = Draft(
                    setup.register_id,
                    "start",
                    receipt_id=receipt_id,
                    issued_at=issued_at,
                    unit_position=unit_position,
                )
                result = self._issue_in(conn, reg, draft)
        if result is None:
            raise WaitsForUnit(START_SENT.format(register=setup.register_id))
        return result

    def _stamp_now(self, timezone: str) -> str:
        return _local_stamp(self.clock.now(), timezone)

    def _start_in(
        self, conn: sqlite3.Connection, setup: RegisterSetup, stamp: str
    ) -> ReceiptResult | None:
        """Create the register and issue its Startbeleg dated ``stamp``.

        A chain service whose answer is lost (``OutcomeUnknown``) may hold the Startbeleg
        signed: then nothing is created, and the waiting Startbeleg (the open one, or a new
        one) keeps ``stamp``, so recovery sends the very same signing input again (the
        service's PUT is idempotent) and number 1 is never signed twice. ``None`` then.
        The Startbeleg is never committed with the failure marker (rksv.md 5). For a chain
        service the register's setup and ``stamp`` are committed first (an intent), so a
        process that dies while the service signs leaves the register waiting the same way.
        """
        closed = check_new_register(conn, setup)
        pending = setup_json(setup, stamp)
        intent: _Intent | None = None
        voids: list[SigningError] = []  # what the Startbeleg's intent is told, if anything
        if self.units.get(conn, setup.unit_ids[0]).capabilities.keeps_chain:
            # before the register exists: a commit while the service signs would commit it
            self._record_intent(conn, setup.register_id, 1, "start", {"setup": json.loads(pending)})
            intent = functools.partial(_start_intent, voids)
        with self._writer.savepoint("startbeleg"):
            try:
                create_register(conn, setup, self.clock.now().isoformat(), closed)
                reg = register_row(conn, setup.register_id)
                draft = Draft(setup.register_id, "start", issued_at=stamp)
                return self._issue_in(conn, reg, draft, intent)
            except WaitsForUnit as exc:
                conn.execute("ROLLBACK TO startbeleg")
                refused = exc
        for void in voids:  # recorded (and committed) only once the register is undone
            self._void_intent(conn, setup.register_id, 1, void)
        if not isinstance(refused.__cause__, OutcomeUnknown):
            raise refused
        start_waits(conn, setup.register_id, pending, str(refused), self.clock.now().isoformat())
        return None

    def issue(self, sale: Sale | bytes | str | dict[str, Any]) -> ReceiptResult:
        """Issue the receipt for a POS sale; a repeated ``request_id`` returns the stored one.

        Concurrent callers share commits (:class:`storage.group_commit.GroupCommit`): each
        returns only after the transaction holding its receipt is durable.

        Raises:
            InvalidSale: the sale breaks a rule (nothing was consumed).
        """
        return self.issue_once(sale).result

    def issue_once(self, sale: Sale | bytes | str | dict[str, Any]) -> Issued:
        """:meth:`issue`, telling whether this call created the receipt. Exact between
        concurrent callers: the lookup and the insert are in one write transaction."""
        if not isinstance(sale, Sale):
            sale = parse_sale(sale)
        sale_hash = sale_fingerprint(sale)
        parsed = sale

        def work(conn: sqlite3.Connection) -> Issued:
            stored = conn.execute(
                "SELECT * FROM receipts WHERE register_id = ? AND request_id = ?",
                (parsed.register_id, parsed.request_id),
            ).fetchone()
            if stored is not None:
                if not same_sale(stored["sale_hash"], parsed):
                    raise InvalidSale(
                        "request_id",
                        "request-id-reused",
                        "this request_id was already used for a different sale",
                    )
                return Issued(result_from_row(current_version(conn, stored)), created=False)
            reg = open_register(conn, parsed.register_id)
            draft = self._draft_for_sale(conn, reg, parsed, sale_hash)
            return Issued(self._issue_in(conn, reg, draft), created=True)

        return self._group.run(work)

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
    ) -> ReceiptResult:
        """Issue a receipt the agent makes itself: null, monthly, yearly, closing, Sammelbeleg.

        A Monats- or Jahresbeleg closes the current month in the register's time zone, as
        if :meth:`run_closings` had issued it: it records the period (so the job does not
        issue a second one) and fulfils a Jahresbeleg waiting for that month.
        ``amounts`` and the kinds standard/storno/training serve the scenario replay.

        Raises:
            RegisterStateError: that month is closed already, or an earlier one is not.
        """
        if kind not in KINDS or kind == "start":
            raise InvalidSale("kind", "allowed-values", f"cannot issue a {kind!r} receipt here")
        with self._transaction() as conn:
            reg = open_register(conn, register_id)
            closes = kind in ("monthly", "yearly")
            period = period_to_close(reg, self.clock.now()) if closes else None
            draft = Draft(
                register_id,
                kind,
                amounts=amounts,
                receipt_id=receipt_id,
                issued_at=issued_at,
                unit_position=unit_position,
                request_id=request_id,
                period=period,
            )
            result = self._issue_in(conn, reg, draft)
            if period is not None and result.signature_state == "signed":
                waiting = open_waiting(conn, register_id, "yearly", period)
                if waiting is not None:
                    waiting_done(conn, waiting, result.number, self.clock.now().isoformat())
        raise_if_lost(result)
        return result

    def get(self, register_id: str, number: int) -> ReceiptResult:
        """The stored receipt ``number`` of ``register_id``; raises ``NotFound``."""
        return result_from_row(self.row(register_id, number))

    def row(self, register_id: str, number: int) -> Any:
        """The ``receipts`` row (a ``sqlite3.Row``) of receipt ``number``; raises ``NotFound``."""
        with self.db.read_connection() as conn:
            return known_receipt(conn, register_id, number)

    # -- sales ----------------------------------------------------------------------------

    def _draft_for_sale(
        self, conn: sqlite3.Connection, reg: sqlite3.Row, sale: Sale, sale_hash: str
    ) -> Draft:
        payments = tuple((p.method, scaled(p.amount, 2)) for p in sale.payments)
        if sale.kind == "storno":
            voided = _voidable(conn, reg["id"], sale.voids)
            amounts: Amounts = tuple(-voided[c] for c in AMOUNT_COLUMNS)
            lines = tuple((t, q, p, v, -c) for t, q, p, v, c in stored_lines(voided))
            if payments and sum(a for _, a in payments) != sum(amounts):
                raise InvalidSale(
                    "payments",
                    "sum-matches-lines",
                    "storno payments must add up to minus the voided total",
                )
            return Draft(
                reg["id"],
                "storno",
                amounts,
                sale.request_id,
                sale_hash,
                voided,
                lines,
                payments,
                sale.cashier,
            )
        lines = tuple(
            (ln.text, ln.qty, ln.unit_price, ln.vat, line_total_cents(ln)) for ln in sale.lines
        )
        return Draft(
            reg["id"],
            sale.kind,
            sum_by_vat(lines),
            sale.request_id,
            sale_hash,
            None,
            lines,
            payments,
            sale.cashier,
        )

    # -- the durable path -----------------------------------------------------------------

    def _issue_in(
        self,
        conn: sqlite3.Connection,
        reg: sqlite3.Row,
        draft: Draft,
        intent: _Intent | None = None,
    ) -> ReceiptResult:
        """Number, sign and store ``draft``; ``intent``: a chain signing's own (default: the
        ``unsigned`` receipt a lost answer would leave, :meth:`_receipt_intent`); a local
        unit has none."""
        register_id, number = reg["id"], reg["last_number"] + 1  # allocated inside the txn
        if draft.kind == "closing":
            self._check_closable(conn, register_id)
        receipt_id = draft.receipt_id or reg["receipt_id_format"].format(number=number)
        check_id("receipt_id", receipt_id)
        unit = self._unit_for(conn, reg, draft.unit_position)
        counted = draft.kind in COUNTED
        turnover = reg["turnover_cents"] + (sum(draft.amounts) if counted else 0)
        now = self.clock.now()
        identity = unit.identity
        payload = Payload(
            identity.suite,
            register_id,
            receipt_id,
            self._issued_at(reg, draft, now),
            tuple(map(cents_to_amount, draft.amounts)),  # type: ignore[arg-type]
            _counter_field(reg, draft.kind, receipt_id, turnover),
            identity.serial,
            chain_value(reg["last_jws"], register_id),
        )
        data = signing_input(payload)
        unit_id = identity.unit_id
        if not unit.capabilities.keeps_chain:
            intent = None  # a local unit signs in-process: nothing is kept elsewhere
        elif intent is None and draft.kind != "start":  # a replayed Startbeleg has none:
            # its commit would commit the register it creates (_start_in keeps its own)
            parts = functools.partial(
                stored_receipt, draft, number, payload, data, unit_id, turnover
            )
            intent = functools.partial(self._receipt_intent, conn, draft, number, parts)
        signature, state = self._sign(conn, unit, data, draft, number, now, intent)
        stored, document = stored_receipt(
            draft, number, payload, data, unit_id, turnover, signature, state
        )
        at = self.clock.now()  # after signing, which may have waited for its deadline
        self._store(conn, stored, document, at)
        if state == "signed" and draft.kind in CHECK_KINDS:  # the operator's check, rksv.md 6
            record_due(conn, register_id, draft.kind, number, payload.issued_at, draft.period, at)
        return result_from_parts(
            register_id, number, draft.kind, state, payload, signature, stored.jws, document
        )

    def _receipt_intent(
        self,
        conn: sqlite3.Connection,
        draft: Draft,
        number: int,
        parts: Callable[[bytes, str], tuple[Stored, dict[str, Any]]],
        refused: SigningError | None,
    ) -> None:
        """A receipt's :data:`_Intent`: before it is sent, record it as the ``unsigned`` one a
        lost answer would leave and commit it (with all the transaction holds so far)."""
        if refused is not None:
            self._void_intent(conn, draft.register_id, number, refused)
            return
        stored, _ = parts(FALLBACK_SIGNATURE, "unsigned")
        intent = {"receipt": stored._asdict(), "voided_by": draft.voided_by}
        self._record_intent(conn, stored.register_id, stored.number, draft.kind, intent)

    def _record_intent(
        self,
        conn: sqlite3.Connection,
        register_id: str,
        number: int,
        kind: str,
        intent: dict[str, Any],
    ) -> None:
        """Commit (fsync) a signing intent and what the transaction wrote before it: a
        process that dies from here on leaves the intent for
        :meth:`Recovery.store_interrupted`.

        The transaction goes on: a group commit's earlier sales and a remedy's earlier
        receipts are committed now, each complete.
        """
        conn.execute(
            "INSERT INTO pending_signings (register_id, number, kind, intent, at)"
            " VALUES (?, ?, ?, ?, ?)",
            (register_id, number, kind, canonical_json(intent), self.clock.now().isoformat()),
        )
        self._writer.commit_so_far()
        self.outages.settle(committed=True)
        self._intent_unsettled = True  # until the transaction commits

    def _void_intent(
        self, conn: sqlite3.Connection, register_id: str, number: int, exc: Exception
    ) -> None:
        """The service answered that it signed nothing: the intent before is void (the
        receipt is not stored, so its number is free)."""
        self._record_intent(conn, register_id, number, "void", {"void": str(exc)})

    def _store(
        self, conn: sqlite3.Connection, stored: Stored, document: dict[str, Any], at: dt.datetime
    ) -> None:
        """Insert the receipt (``document``: its document, parsed) and its journal event; move
        the register on to it and settle what it settles (:meth:`_after_store`)."""
        seq = append_event(
            conn,
            kind="receipt.issued",
            register_id=stored.register_id,
            at=at.isoformat(),
            data=receipt_event(stored, document),
        )
        conn.execute(
            _INSERT_RECEIPT,
            (
                stored.register_id,
                stored.number,
                stored.receipt_id,
                stored.kind,
                stored.request_id,
                stored.sale_hash,
                stored.issued_at,
                *stored.amounts,
                stored.turnover,
                stored.jws,
                stored.state,
                stored.unit_id,
                stored.voids,
                stored.document,
                seq,
            ),
        )
        closed = "closed" if stored.kind == "closing" else "active"
        conn.execute(
            _UPDATE_REGISTER,
            (
                stored.number,
                stored.turnover,
                stored.jws,
                stored.issued_at,
                closed,
                stored.register_id,
            ),
        )
        self._after_store(conn, stored, document.get("period"), at)

    def _after_store(
        self, conn: sqlite3.Connection, stored: Stored, period: str | None, at: dt.datetime
    ) -> None:
        """What a stored receipt settles: its month, a waiting Jahresbeleg, the outage."""
        register_id, kind, number, state = (
            stored.register_id,
            stored.kind,
            stored.number,
            stored.state,
        )
        lost = state != "signed" and kind in MUST_SIGN
        if period is not None and not lost:  # a lost Jahresbeleg leaves its month open
            conn.execute(
                "UPDATE registers SET last_closing = ? WHERE id = ?", (period, register_id)
            )
        if lost and kind == "yearly":  # it waits (an unsigned Sammelbeleg: the outage)
            reason = f"Jahresbeleg {number} was sent, but no answer came; it is issued again"
            record_waiting(conn, register_id, "yearly", period, reason, at.isoformat())
        if state == "signed" and kind in MUST_SIGN:
            supersede_lost(conn, register_id, kind, period, number, at.isoformat())
        if kind == "sammelbeleg" and state == "signed" and self.outages.is_open(register_id):
            self.outages.close(conn, register_id, number, at)

    def _check_closable(self, conn: sqlite3.Connection, register_id: str) -> None:
        """Refuse a Schlussbeleg while the register waits for its unit: after it the
        register issues nothing, so an open outage could never get its Sammelbeleg (nor an
        unsigned receipt its remedy, nor a waiting Jahresbeleg its turn)."""
        if self.outages.is_open(register_id):
            why = "has an open outage that only its signed Sammelbeleg closes"
        elif unresolved(conn, register_id):
            why = "has unsigned receipts waiting for their remedy"
        elif any_waiting(conn, register_id):
            why = "has a special receipt waiting for the unit"
        else:
            return
        raise WaitsForUnit(
            f"register {register_id} {why}: the Schlussbeleg waits until the unit answers"
            " and recovery is done (till-agent outage recover); nothing was issued"
        )

    def _unit_for(
        self, conn: sqlite3.Connection, reg: sqlite3.Row, position: int | None
    ) -> SignatureUnit:
        unit_id = reg["active_unit"]
        if position is not None:
            row = conn.execute(
                "SELECT unit_id FROM register_units WHERE register_id = ? AND position = ?",
                (reg["id"], position),
            ).fetchone()
            if row is None:
                raise InvalidSale(
                    "unit_position",
                    "unit-unknown",
                    f"register {reg['id']} has no unit at position {position}",
                )
            unit_id = row[0]
        return self.units.get(conn, unit_id)

    def _issued_at(self, reg: sqlite3.Row, draft: Draft, now: dt.datetime) -> str:
        if draft.issued_at is not None:
            stamp = draft.issued_at
        else:
            stamp = _local_stamp(now, reg["timezone"])
        # dates never go back within a register (a clock set back must not reorder the DEP)
        last = reg["last_issued_at"]
        return last if last is not None and stamp < last else stamp

    def _sign(  # noqa: PLR0917 - the receipt being signed, in the order it is made
        self,
        conn: sqlite3.Connection,
        unit: SignatureUnit,
        data: bytes,
        draft: Draft,
        number: int,
        now: dt.datetime,
        intent: _Intent | None,
    ) -> tuple[bytes, str]:
        register_id, kind = draft.register_id, draft.kind
        must_sign = kind in MUST_SIGN or draft.force_sign
        is_open = self.outages.is_open(register_id)
        if is_open and kind != "sammelbeleg" and not draft.force_sign:
            # the breaker is open: no call to the unit, the probe finds out when it is back
            if must_sign:
                raise WaitsForUnit(f"a {kind} receipt must be signed: it waits for the unit")
            self.outages.affected(conn, register_id, number, now)
            return FALLBACK_SIGNATURE, "fallback"
        if intent is not None:
            intent(None)  # durable before the request leaves: the service keeps what it signs
        try:
            return sign_verified(unit, data, timeout=self.sign_timeout), "signed"
        except SigningError as exc:
            unknown = isinstance(exc, OutcomeUnknown)
            # a Schlussbeleg's outage could never be closed: the register ends
            if kind == "closing" or (must_sign and (kind == "start" or not unknown)):
                self._refuse(draft, exc, intent)
            # an unknown outcome (a chain service that may hold a signature) is `unsigned`:
            # it chains like a fallback receipt and is remedied when the service answers.
            # A receipt that must be signed, too: rolling it back would give its number,
            # which the service may hold signed, to the next receipt. Its obligation stays
            # open (the outage, a waiting Jahresbeleg, the rest of a remedy).
            state = "unsigned" if unknown else "fallback"
            at = self.clock.now()
            self.outages.not_signed(conn, register_id, unit.identity.unit_id, str(exc), number, at)
            return FALLBACK_SIGNATURE, state

    def _refuse(self, draft: Draft, exc: SigningError, intent: _Intent | None) -> NoReturn:
        """The receipt is not stored: it must be signed, and a Schlussbeleg only signed (no
        Sammelbeleg could follow it). A chain service that answered signed nothing: its
        intent is void. One whose answer was lost may hold the receipt: its intent stands,
        and the Startbeleg or Schlussbeleg waits to be sent again unchanged (:meth:`_start_in`;
        :meth:`Recovery.store_interrupted` once this transaction has rolled back)."""
        lost = intent is not None and isinstance(exc, OutcomeUnknown)
        if intent is not None and not lost:
            intent(exc)
        if draft.kind != "closing":
            raise WaitsForUnit(
                f"a {draft.kind} receipt must be validly signed and the unit failed: {exc}"
            ) from exc
        if lost:
            raise WaitsForUnit(CLOSING_SENT.format(register=draft.register_id)) from exc
        raise WaitsForUnit(
            f"the unit failed ({exc}): a Schlussbeleg is issued only when it signs,"
            " since no Sammelbeleg could follow it; nothing was issued"
        ) from exc

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
        by :meth:`recover`.
        """
        try:
            with self._transaction() as conn:
                reg = open_register(conn, register_id)
                result = self._issue_in(conn, reg, Draft(register_id, kind, period=period))
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
        with self._transaction() as conn:
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
            rows = conn.execute(
                "SELECT register_id FROM waiting_specials WHERE done_at IS NULL UNION "
                "SELECT r.register_id FROM receipts r LEFT JOIN receipt_resolutions x"
                " ON x.register_id = r.register_id AND x.number = r.number"
                " WHERE r.signature_state = 'unsigned' AND x.number IS NULL"
            ).fetchall()
        return sorted({*self.outages.open_registers(), *(str(r[0]) for r in rows)})

    def unit_of(self, register_id: str) -> SignatureUnit:
        """The active unit of a register, or of a register whose Startbeleg waits."""
        with self.db.read_connection() as conn:
            row = conn.execute(
                "SELECT active_unit FROM registers WHERE id = ?", (register_id,)
            ).fetchone()
            if row is None:
                start = open_waiting(conn, register_id, "start", None)
                if start is None:
                    raise NotFound(f"register {register_id} is not initialized on this till")
                return self.units.get(conn, json.loads(start["setup"])["units"][0])
            return self.units.get(conn, row[0])

    def record_probe(self, register_id: str, ok: bool, detail: str) -> None:
        """Record a probe of the register's unit in its open outage (if one is open)."""
        with self._transaction() as conn:
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
        waits for the unit (later months wait behind it).
        """
        issued = []
        with self.db.read_connection() as conn:
            registers = conn.execute(
                "SELECT id, timezone, created_at, last_closing FROM registers"
                " WHERE state = 'active' ORDER BY id"
            ).fetchall()
        for reg in registers:
            if waiting_in(self.db, reg["id"], "yearly") is not None:
                continue
            now_local = self.clock.now().astimezone(ZoneInfo(reg["timezone"]))
            first = period_of(reg["created_at"], reg["timezone"])
            for period in due_periods(reg["last_closing"], first, now_local):
                kind = "yearly" if period.endswith("-12") else "monthly"
                result = self.request_special(reg["id"], kind, period=period)
                if result is None:
                    break
                issued.append(result)
        return issued


def _check_setup(setup: RegisterSetup) -> None:
    """Refuse a register that could never sell, before anything is written."""
    if not is_register_id(setup.register_id):
        raise InvalidSale("register", "id-format", REGISTER_ID_RULE)
    try:
        first, second = (setup.receipt_id_format.format(number=n) for n in (1, 2))
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidSale(
            "receipt_id_format", "format", f"use {{number}} (optionally like {{number:06d}}): {exc}"
        ) from exc
    if first == second:
        raise InvalidSale("receipt_id_format", "format", "the format must contain {number}")
    check_id("receipt_id_format", first)
    if not 5 <= setup.counter_bytes <= 16:
        raise InvalidSale("counter_bytes", "range", "the turnover counter has 5 to 16 bytes")
    if setup.timezone not in AUSTRIAN_ZONES:
        raise InvalidSale(
            "timezone",
            "time-zone",
            f"receipts carry Austrian local time (reference/rksv.md 1.1): the time zone must"
            f" be Europe/Vienna, not {setup.timezone!r}",
        )
    try:
        ZoneInfo(setup.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidSale("timezone", "time-zone", f"unknown time zone {setup.timezone!r}") from exc
    if len(setup.aes_key) != 32:
        raise InvalidSale("aes_key", "aes-256", "the AES key must be 32 bytes")


def _voidable(conn: sqlite3.Connection, register_id: str, number: int | None) -> sqlite3.Row:
    row = receipt_row(conn, register_id, number)
    if row is None:
        raise InvalidSale(
            "voids", "voids-unknown", f"register {register_id} has no receipt number {number}"
        )
    if row["kind"] != "standard":
        raise InvalidSale("voids", "voids-kind", f"a {row['kind']} receipt cannot be voided")
    if conn.execute(
        "SELECT 1 FROM receipts WHERE register_id = ? AND voids_number = ?", (register_id, number)
    ).fetchone():
        raise InvalidSale("voids", "already-voided", f"receipt {number} is already voided")
    return row


def _counter_field(reg: sqlite3.Row, kind: str, receipt_id: str, turnover: int) -> str:
    if kind == "storno":
        return STORNO_MARKER
    if kind == "training":
        return TRAINING_MARKER
    key = _aes_key(reg["aes_key"])
    try:
        return encrypt_counter(key, reg["id"], receipt_id, turnover, reg["counter_bytes"])
    except ValueError as exc:
        raise FiscalError(
            f"register {reg['id']}: the turnover counter no longer fits "
            f"{reg['counter_bytes']} bytes; close the register and start a new one"
        ) from exc


@functools.lru_cache(maxsize=64)
def _aes_key(text: str) -> bytes:
    return base64.b64decode(text)


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _start_intent(voids: list[SigningError], refused: SigningError | None) -> None:
    """The Startbeleg's :data:`_Intent`: :meth:`ReceiptService._start_in` committed it
    already, and records a refusal itself once the register it created is undone."""
    if refused is not None:
        voids.append(refused)


def _local_stamp(now: dt.datetime, timezone: str) -> str:
    """Field 4 of a receipt: ``now`` as local time of ``timezone``, whole seconds."""
    return now.astimezone(_zone(timezone)).replace(tzinfo=None, microsecond=0).isoformat()
