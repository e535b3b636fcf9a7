"""The receipt service: turns sales into signed, chained, durably journaled receipts.

The durable order (DESIGN.md invariant 1) is the shape of :meth:`ReceiptService._issue_in`:
validate -> ``BEGIN IMMEDIATE`` -> allocate the number -> sign (or fallback) -> insert
receipt and journal event, update the register -> ``COMMIT`` (WAL, synchronous=FULL) ->
return. Nothing is returned, printed or acknowledged before the commit; a crash before it
leaves no trace, because the number is allocated inside the transaction.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn
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
    jws_compact,
    signing_input,
    split_jws,
)
from agent.checks import CHECK_KINDS, record_due
from agent.clock import Clock, SystemClock
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
    RegisterClosed,
    RegisterStateError,
    SigningError,
    StorageError,
    WaitsForUnit,
)
from agent.outage_watch import OutageWatch, Thresholds
from agent.outages import OutageBook
from agent.receipt_text import TextFacts, render_lines
from agent.receipt_view import AMOUNT_COLUMNS, Amounts, result_from_parts, result_from_row
from agent.signing import SignatureUnit, sign_verified, verify_rs
from agent.signing.registry import UnitRegistry
from storage.db import TillDB
from storage.group_commit import GroupCommit
from storage.journal import append_event, canonical_json

__all__ = ["KINDS", "MUST_SIGN", "Issued", "ReceiptService", "RegisterSetup"]

KINDS = (
    "start",
    "standard",
    "storno",
    "training",
    "null",
    "monthly",
    "yearly",
    "closing",
    "sammelbeleg",
)
MUST_SIGN = frozenset({"start", "yearly", "sammelbeleg"})
COUNTED = frozenset({"standard", "storno"})  # the kinds whose amounts the counter adds
ZERO: Amounts = (0, 0, 0, 0, 0)
_log = logging.getLogger(__name__)
_VATS = ("normal", "reduced1", "reduced2", "zero", "special")
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
Line = tuple[str, str, str, str, int]  # text, qty, unit price, vat class, total cents
# a chain signing's intent: called with None before the request leaves (commit it), and
# with the refusal when the service answered that it signed nothing (void it)
_Intent = Callable[[SigningError | None], None]


@dataclass(frozen=True, slots=True)
class RegisterSetup:
    """What ``init`` needs to know about a new register."""

    register_id: str
    unit_ids: Sequence[str]
    counter_bytes: int = 8
    aes_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    timezone: str = "Europe/Vienna"
    receipt_id_format: str = "{number}"


@dataclass(frozen=True, slots=True)
class Issued:
    """A receipt for a sale, and whether this call created it (``False``: a repeat)."""

    result: ReceiptResult
    created: bool


@dataclass(frozen=True, slots=True)
class _Draft:
    """A receipt before it has a number: everything the caller decides."""

    register_id: str
    kind: str
    amounts: Amounts = ZERO
    request_id: str | None = None
    sale_hash: str | None = None
    voids: sqlite3.Row | None = None
    lines: tuple[Line, ...] = ()
    payments: tuple[tuple[str, int], ...] = ()
    cashier: str | None = None
    receipt_id: str | None = None  # override (scenario replay); default from the format
    issued_at: str | None = None  # override (scenario replay); default from the clock
    unit_position: int | None = None  # override (scenario replay); default the active unit
    force_sign: bool = False  # remedies: sign even while the outage is open, or fail
    reissue_of: sqlite3.Row | None = None  # the unsigned receipt this one replaces
    voided_by: int | None = None  # the Storno that took ``reissue_of`` back, if it counted
    period: str | None = None  # "YYYY-MM" of a Monats-/Jahresbeleg


class _Stored(NamedTuple):
    """A receipt as it is stored: its ``receipts`` row (the register moves on to its number,
    counter, JWS and date; :func:`_event` is its journal event). JSON-able: an intent keeps
    one. A named tuple: a frozen dataclass costs microseconds per sale to build."""

    register_id: str
    number: int
    receipt_id: str
    kind: str
    request_id: str | None
    sale_hash: str | None
    issued_at: str
    amounts: Amounts
    turnover: int
    jws: str
    state: str
    unit_id: str
    voids: int | None
    document: str  # canonical JSON


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
        # an intent left by a transaction that rolled back after committing it
        self._intent_unsettled = True  # and at start: one left by a process that died
        with self._transaction(settle_now=False):
            pass

    @contextmanager
    def _transaction(self, *, settle_now: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction whose in-memory outage changes follow its fate.

        It first stores what an earlier one left behind (:meth:`_store_interrupted`); after
        a refusal (``settle_now``) that happens at once, in a transaction of its own.
        """
        with self._lock:  # settle() must see only this transaction's outage changes
            try:
                with self._writer.transaction() as conn:
                    if self._intent_unsettled:
                        self._store_interrupted(conn)
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
                self._refuse_pending_start(conn, setup.register_id)
                result = self._start_in(conn, setup, self._stamp_now(setup.timezone))
            else:  # a scenario replay decides the receipt; no answer is lost there
                self._create_register(conn, setup)
                reg = self._register_row(conn, setup.register_id)
                draft = _Draft(
                    setup.register_id,
                    "start",
                    receipt_id=receipt_id,
                    issued_at=issued_at,
                    unit_position=unit_position,
                )
                result = self._issue_in(conn, reg, draft)
        if result is None:
            raise WaitsForUnit(_START_SENT.format(register=setup.register_id))
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
        closed = self._check_new_register(conn, setup)
        pending = _setup_json(setup, stamp)
        intent: _Intent | None = None
        if self.units.get(conn, setup.unit_ids[0]).capabilities.keeps_chain:
            # before the register exists: a commit while the service signs would commit it
            self._record_intent(conn, setup.register_id, 1, "start", {"setup": json.loads(pending)})
            intent = functools.partial(self._start_intent, conn, setup.register_id)
        with self._writer.savepoint("startbeleg"):
            try:
                self._create_register(conn, setup, closed)
                reg = self._register_row(conn, setup.register_id)
                draft = _Draft(setup.register_id, "start", issued_at=stamp)
                return self._issue_in(conn, reg, draft, intent)
            except WaitsForUnit as exc:
                conn.execute("ROLLBACK TO startbeleg")
                refused = exc
        if not isinstance(refused.__cause__, OutcomeUnknown):
            raise refused
        self._start_waits(conn, setup.register_id, pending, str(refused))
        return None

    def _start_intent(
        self, conn: sqlite3.Connection, register_id: str, refused: SigningError | None
    ) -> None:
        """The Startbeleg's :data:`_Intent`: :meth:`_start_in` committed it already, so only a
        refusal is recorded, once the register it created is undone."""
        if refused is not None:
            conn.execute("ROLLBACK TO startbeleg")
            self._void_intent(conn, register_id, 1, refused)

    def _start_waits(
        self, conn: sqlite3.Connection, register_id: str, pending: str, reason: str
    ) -> bool:
        """The register waits for its Startbeleg, sent with the setup ``pending`` (JSON);
        ``False`` if it waited for that one already."""
        waiting = open_waiting(conn, register_id, "start", None)
        if waiting is None:
            self._record_waiting_in(conn, register_id, "start", None, reason, pending)
        elif waiting["setup"] != pending:
            conn.execute(
                "UPDATE waiting_specials SET setup = ? WHERE id = ?", (pending, waiting["id"])
            )
        else:
            return False
        return True

    def _refuse_pending_start(self, conn: sqlite3.Connection, register_id: str) -> None:
        """A Startbeleg the chain service may hold is completed by recovery, never anew."""
        waiting = open_waiting(conn, register_id, "start", None)
        if waiting is not None and "issued_at" in json.loads(waiting["setup"]):
            raise WaitsForUnit(_START_SENT.format(register=register_id))

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
                return Issued(result_from_row(_current_version(conn, stored)), created=False)
            reg = self._open_register(conn, parsed.register_id)
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
            reg = self._open_register(conn, register_id)
            period = self._period_to_close(reg) if kind in ("monthly", "yearly") else None
            draft = _Draft(
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
                    self._waiting_done(conn, waiting, result.number)
        _raise_if_lost(result)
        return result

    def _period_to_close(self, reg: sqlite3.Row) -> str:
        """The month a Monats-/Jahresbeleg issued now closes; refuse a closed or a skipped one."""
        period = self.clock.now().astimezone(_zone(reg["timezone"])).strftime("%Y-%m")
        last = reg["last_closing"]
        if last is not None and period <= last:
            raise RegisterStateError(
                f"register {reg['id']}: the month {period} is closed already (last closing"
                f" {last}); a second Monats-/Jahresbeleg for it is not issued"
            )
        expected = _period_of(reg["created_at"], reg["timezone"]) if last is None else None
        expected = expected or _next_period(last)
        if period > expected:
            raise RegisterStateError(
                f"register {reg['id']}: the closings from {expected} on are not issued yet;"
                f" they come first, in order (the agent's closing job catches them up)"
            )
        return period

    def get(self, register_id: str, number: int) -> ReceiptResult:
        """The stored receipt ``number`` of ``register_id``; raises ``NotFound``."""
        return result_from_row(self.row(register_id, number))

    def row(self, register_id: str, number: int) -> Any:
        """The ``receipts`` row (a ``sqlite3.Row``) of receipt ``number``; raises ``NotFound``."""
        with self.db.read_connection() as conn:
            row = _receipt_row(conn, register_id, number)
        if row is None:
            raise NotFound(f"register {register_id} has no receipt {number}")
        return row

    # -- registers ------------------------------------------------------------------------

    def _check_new_register(self, conn: sqlite3.Connection, setup: RegisterSetup) -> bool:
        """Refuse an existing register or unusable units; whether it is a closed system."""
        if conn.execute("SELECT 1 FROM registers WHERE id = ?", (setup.register_id,)).fetchone():
            raise InvalidSale(
                "register",
                "register-exists",
                f"register {setup.register_id} is already initialized",
            )
        zdas = _unit_zdas(conn, setup.unit_ids)
        closed = zdas[0] == "AT0"
        if any((z == "AT0") != closed for z in zdas):
            raise InvalidSale("units", "one-system", "do not mix closed (AT0) and open units")
        return closed

    def _create_register(
        self, conn: sqlite3.Connection, setup: RegisterSetup, closed: bool | None = None
    ) -> None:
        """Insert the register (``closed``: what :meth:`_check_new_register` found, when the
        caller checked already)."""
        if closed is None:
            closed = self._check_new_register(conn, setup)
        now = self.clock.now().isoformat()
        conn.execute(
            "INSERT INTO registers (id, closed_system, counter_bytes, aes_key, timezone,"
            " receipt_id_format, state, active_unit, last_number, turnover_cents, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 'active', ?, 0, 0, ?)",
            (
                setup.register_id,
                closed,
                setup.counter_bytes,
                base64.b64encode(setup.aes_key).decode(),
                setup.timezone,
                setup.receipt_id_format,
                setup.unit_ids[0],
                now,
            ),
        )
        conn.executemany(
            "INSERT INTO register_units (register_id, position, unit_id) VALUES (?, ?, ?)",
            [(setup.register_id, i, u) for i, u in enumerate(setup.unit_ids)],
        )
        append_event(
            conn,
            kind="register.initialized",
            register_id=setup.register_id,
            at=now,
            data={
                "units": list(setup.unit_ids),
                "closed_system": closed,
                "counter_bytes": setup.counter_bytes,
                "timezone": setup.timezone,
            },
        )

    def _register_row(self, conn: sqlite3.Connection, register_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM registers WHERE id = ?", (register_id,)
        ).fetchone()
        if row is None:
            if open_waiting(conn, register_id, "start", None) is not None:
                raise WaitsForUnit(
                    f"register {register_id} waits for its Startbeleg: the signature unit"
                    " is down; it is issued as soon as the unit answers"
                )
            raise InvalidSale(
                "register",
                "register-unknown",
                f"register {register_id!r} is not initialized on this till",
            )
        return row

    def _open_register(self, conn: sqlite3.Connection, register_id: str) -> sqlite3.Row:
        reg = self._register_row(conn, register_id)
        if reg["state"] != "active":
            if open_waiting(conn, register_id, "closing", None) is not None:
                raise WaitsForUnit(_CLOSING_SENT.format(register=register_id))
            raise RegisterClosed(register_id)
        return reg

    # -- sales ----------------------------------------------------------------------------

    def _draft_for_sale(
        self, conn: sqlite3.Connection, reg: sqlite3.Row, sale: Sale, sale_hash: str
    ) -> _Draft:
        payments = tuple((p.method, scaled(p.amount, 2)) for p in sale.payments)
        if sale.kind == "storno":
            voided = _voidable(conn, reg["id"], sale.voids)
            amounts: Amounts = tuple(-voided[c] for c in AMOUNT_COLUMNS)
            lines = tuple((t, q, p, v, -c) for t, q, p, v, c in _stored_lines(voided))
            if payments and sum(a for _, a in payments) != sum(amounts):
                raise InvalidSale(
                    "payments",
                    "sum-matches-lines",
                    "storno payments must add up to minus the voided total",
                )
            return _Draft(
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
        return _Draft(
            reg["id"],
            sale.kind,
            _sum_by_vat(lines),
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
        draft: _Draft,
        intent: _Intent | None = None,
    ) -> ReceiptResult:
        """Number, sign and store ``draft``; ``intent``: a chain signing's own (default: the
        ``unsigned`` receipt a lost answer would leave, :meth:`_receipt_intent`); a local
        unit has none."""
        register_id, number = reg["id"], reg["last_number"] + 1  # allocated inside the txn
        if draft.kind == "closing":
            self._check_closable(conn, register_id)
        receipt_id = draft.receipt_id or reg["receipt_id_format"].format(number=number)
        _check_id("receipt_id", receipt_id)
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
        elif intent is None:
            parts = functools.partial(_stored, draft, number, payload, data, unit_id, turnover)
            intent = functools.partial(self._receipt_intent, conn, draft, number, parts)
        signature, state = self._sign(conn, unit, data, draft, number, now, intent)
        stored, document = _stored(
            draft, number, payload, data, unit_id, turnover, signature, state
        )
        at = self.clock.now()  # after signing, which may have waited for its deadline
        self._store(conn, stored, document, at)
        self._after_store(conn, register_id, draft.kind, draft.period, number, state, at)
        if state == "signed" and draft.kind in CHECK_KINDS:  # the operator's check, rksv.md 6
            record_due(conn, register_id, draft.kind, number, payload.issued_at, draft.period, at)
        return result_from_parts(
            register_id, number, draft.kind, state, payload, signature, stored.jws, document
        )

    def _receipt_intent(
        self,
        conn: sqlite3.Connection,
        draft: _Draft,
        number: int,
        parts: Callable[[bytes, str], tuple[_Stored, dict[str, Any]]],
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
        process that dies from here on leaves the intent for :meth:`_store_interrupted`.

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

    def _store_interrupted(self, conn: sqlite3.Connection) -> None:
        """Store each signing whose process ended while the chain service signed (or before
        its COMMIT) as a lost answer would have: the service may hold it signed, so its
        number is never given to another receipt (recovery adopts or remedies it)."""
        for row in conn.execute(_INTERRUPTED).fetchall():
            intent = json.loads(row["intent"])
            if "void" in intent:
                continue
            if "setup" in intent:
                setup = canonical_json(intent["setup"])
                if not self._start_waits(conn, row["register_id"], setup, _START_INTERRUPTED):
                    continue  # it waits already (its answer was lost, or an earlier start)
            elif row["kind"] == "closing":
                if not self._closing_waits(conn, intent):
                    continue
            else:
                self._store_lost(conn, intent)
            facts = {"number": row["number"], "kind": row["kind"], "intent": row["id"]}
            now = self.clock.now().isoformat()
            append_event(
                conn, kind="signing.interrupted", register_id=row["register_id"], at=now, data=facts
            )
            _log.warning(
                "register %s: the %s receipt %d was being signed by the chain service when"
                " the process ended (or its transaction failed); %s",
                row["register_id"],
                row["kind"],
                row["number"],
                "it waits and is sent again unchanged"
                if "setup" in intent or row["kind"] == "closing"
                else "stored unsigned until the service answers",
            )

    def _store_lost(self, conn: sqlite3.Connection, intent: dict[str, Any]) -> None:
        """Store an intent's receipt ``unsigned``, with all its lost answer would have done."""
        stored = _intended(intent)
        register_id, number = stored.register_id, stored.number
        self._check_follows(conn, stored)
        at = self.clock.now()
        cause = f"the process ended while the chain service signed receipt {number}"
        self._not_signed(conn, register_id, stored.unit_id, cause, number, at)
        document = json.loads(stored.document)
        self._store(conn, stored, document, at)
        self._after_store(
            conn, register_id, stored.kind, document.get("period"), number, "unsigned", at
        )
        if "reissue_of" in document:  # as _close_outage does after a lost reissue
            old = _receipt_row(conn, register_id, document["reissue_of"])
            assert old is not None  # the original precedes its reissue in the same register
            self._resolve(
                conn, old, "superseded", replacement=number, voided_by=intent["voided_by"]
            )

    def _check_follows(self, conn: sqlite3.Connection, stored: _Stored) -> None:
        """An interrupted receipt's number is the register's next (nothing came after it)."""
        if self._register_row(conn, stored.register_id)["last_number"] != stored.number - 1:
            raise FiscalError(
                f"register {stored.register_id}: the signing intent of receipt"
                f" {stored.number} does not follow the register's last receipt; the till"
                " database is inconsistent"
            )

    def _closing_waits(self, conn: sqlite3.Connection, intent: dict[str, Any]) -> bool:
        """The register waits for a Schlussbeleg the chain service may hold: closed to
        sales, it is sent again unchanged by recovery (:meth:`_issue_waiting_closing`).
        ``False``: it waits already."""
        stored = _intended(intent)
        if open_waiting(conn, stored.register_id, "closing", None) is not None:
            return False
        self._check_follows(conn, stored)
        reason = _CLOSING_SENT.format(register=stored.register_id)
        self._record_waiting_in(
            conn, stored.register_id, "closing", None, reason, canonical_json(intent)
        )
        conn.execute("UPDATE registers SET state = 'closed' WHERE id = ?", (stored.register_id,))
        return True

    def _void_intent(
        self, conn: sqlite3.Connection, register_id: str, number: int, exc: Exception
    ) -> None:
        """The service answered that it signed nothing: the intent before is void (the
        receipt is not stored, so its number is free)."""
        self._record_intent(conn, register_id, number, "void", {"void": str(exc)})

    def _store(
        self, conn: sqlite3.Connection, stored: _Stored, document: dict[str, Any], at: dt.datetime
    ) -> None:
        """Insert the receipt (``document``: its document, parsed) and its journal event; move
        the register on to it."""
        seq = append_event(
            conn,
            kind="receipt.issued",
            register_id=stored.register_id,
            at=at.isoformat(),
            data=_event(stored, document),
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

    def _after_store(  # noqa: PLR0917 - the facts of the receipt just stored
        self,
        conn: sqlite3.Connection,
        register_id: str,
        kind: str,
        period: str | None,
        number: int,
        state: str,
        at: dt.datetime,
    ) -> None:
        """What a stored receipt settles: its month, a waiting Jahresbeleg, the outage."""
        lost = state != "signed" and kind in MUST_SIGN
        if period is not None and not lost:  # a lost Jahresbeleg leaves its month open
            conn.execute(
                "UPDATE registers SET last_closing = ? WHERE id = ?", (period, register_id)
            )
        if lost and kind == "yearly":  # it waits (an unsigned Sammelbeleg: the outage)
            reason = f"Jahresbeleg {number} was sent, but no answer came; it is issued again"
            self._record_waiting_in(conn, register_id, "yearly", period, reason)
        if state == "signed" and kind in MUST_SIGN:
            self._supersede_lost(conn, register_id, kind, period, number)
        if kind == "sammelbeleg" and state == "signed" and self.outages.is_open(register_id):
            self.outages.close(conn, register_id, number, at)

    def _supersede_lost(
        self, conn: sqlite3.Connection, register_id: str, kind: str, period: str | None, number: int
    ) -> None:
        """A signed Sammel-/Jahresbeleg supersedes the unresolved unsigned ones of its kind
        (and month): their obligation is met now. Their numbers stay theirs (the chain
        service may hold them signed); zero receipts need no Storno."""
        for row in _unresolved(conn, register_id):
            if row["kind"] == kind and json.loads(row["document"]).get("period") == period:
                self._resolve(conn, row, "superseded", replacement=number)

    def _check_closable(self, conn: sqlite3.Connection, register_id: str) -> None:
        """Refuse a Schlussbeleg while the register waits for its unit: after it the
        register issues nothing, so an open outage could never get its Sammelbeleg (nor an
        unsigned receipt its remedy, nor a waiting Jahresbeleg its turn)."""
        if self.outages.is_open(register_id):
            why = "has an open outage that only its signed Sammelbeleg closes"
        elif _unresolved(conn, register_id):
            why = "has unsigned receipts waiting for their remedy"
        elif conn.execute(
            "SELECT 1 FROM waiting_specials WHERE register_id = ? AND done_at IS NULL",
            (register_id,),
        ).fetchone():
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

    def _issued_at(self, reg: sqlite3.Row, draft: _Draft, now: dt.datetime) -> str:
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
        draft: _Draft,
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
            self._not_signed(conn, register_id, unit.identity.unit_id, str(exc), number, at)
            return FALLBACK_SIGNATURE, state

    def _not_signed(  # noqa: PLR0917 - the outage's facts, in the order it records them
        self,
        conn: sqlite3.Connection,
        register_id: str,
        unit_id: str,
        cause: str,
        number: int,
        at: dt.datetime,
    ) -> None:
        """Receipt ``number`` is stored without a signature: it opens the register's outage
        (for ``cause``), or is one more receipt of the open one."""
        if self.outages.is_open(register_id):
            self.outages.affected(conn, register_id, number, at)
        else:
            self.outages.open(
                conn, register_id=register_id, unit_id=unit_id, cause=cause, number=number, at=at
            )

    def _refuse(self, draft: _Draft, exc: SigningError, intent: _Intent | None) -> NoReturn:
        """The receipt is not stored: it must be signed, and a Schlussbeleg only signed (no
        Sammelbeleg could follow it). A chain service that answered signed nothing: its
        intent is void. One whose answer was lost may hold the receipt: its intent stands,
        and the Startbeleg or Schlussbeleg waits to be sent again unchanged
        (:meth:`_start_in`, :meth:`_closing_waits` after this transaction rolls back)."""
        lost = intent is not None and isinstance(exc, OutcomeUnknown)
        if intent is not None and not lost:
            intent(exc)
        if draft.kind != "closing":
            raise WaitsForUnit(
                f"a {draft.kind} receipt must be validly signed and the unit failed: {exc}"
            ) from exc
        if lost:
            raise WaitsForUnit(_CLOSING_SENT.format(register=draft.register_id)) from exc
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
            self._record_waiting(setup.register_id, "start", None, str(exc), _setup_json(setup))
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
                reg = self._open_register(conn, register_id)
                result = self._issue_in(conn, reg, _Draft(register_id, kind, period=period))
        except WaitsForUnit as exc:
            self._record_waiting(register_id, kind, period, str(exc))
            return None
        return None if _lost(result) else result  # a lost one waits (recorded with it)

    def _record_waiting(
        self,
        register_id: str,
        kind: str,
        period: str | None,
        reason: str,
        setup: str | None = None,
    ) -> None:
        with self._transaction() as conn:
            self._record_waiting_in(conn, register_id, kind, period, reason, setup)

    def _record_waiting_in(  # noqa: PLR0917 - the columns of the waiting row, in order
        self,
        conn: sqlite3.Connection,
        register_id: str,
        kind: str,
        period: str | None,
        reason: str,
        setup: str | None = None,
    ) -> None:
        now = self.clock.now().isoformat()
        if open_waiting(conn, register_id, kind, period) is not None:
            return
        conn.execute(
            "INSERT INTO waiting_specials (register_id, kind, period, reason, setup,"
            " requested_at) VALUES (?, ?, ?, ?, ?, ?)",
            (register_id, kind, period, reason, setup, now),
        )
        facts = {"kind": kind, "period": period, "reason": reason}
        append_event(conn, kind="special.waiting", register_id=register_id, at=now, data=facts)
        alert = {"level": "warning", "alert": "special-receipt-waiting", **facts}
        append_event(conn, kind="alert.raised", register_id=register_id, at=now, data=alert)

    def waiting(self, register_id: str | None = None) -> list[dict[str, Any]]:
        """Special receipts waiting for their unit (oldest first)."""
        return [{k: row[k] for k in _WAITING_FIELDS} for row in self._waiting_rows(register_id)]

    def _waiting_rows(self, register_id: str | None) -> list[sqlite3.Row]:
        with self.db.read_connection() as conn:
            rows: list[sqlite3.Row] = conn.execute(
                "SELECT * FROM waiting_specials WHERE done_at IS NULL"
                " AND (? IS NULL OR register_id = ?) ORDER BY id",
                (register_id, register_id),
            ).fetchall()
        return rows

    def unsigned(self, register_id: str | None = None) -> list[dict[str, Any]]:
        """``unsigned`` receipts not yet remedied (adopted or superseded)."""
        with self.db.read_connection() as conn:
            rows = _unresolved(conn, register_id)
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
        with self._transaction() as conn:
            if self.outages.is_open(register_id):
                self.outages.probed(conn, register_id, ok, detail, self.clock.now())

    def recover(self, register_id: str) -> list[ReceiptResult] | None:
        """Everything that waited for the unit of ``register_id``, once it answers again.

        In order: a waiting Startbeleg; unsigned receipts the chain service has are
        adopted; then in ONE transaction a signed Nullbeleg (if a sale must be reissued),
        the Sammelbeleg that closes the outage (right after the last fallback receipt, or
        right after that Nullbeleg, the first receipt signed again), and the reissued
        sales, each superseding its unsigned original (a sale the POS voided meanwhile is
        only resolved, see :meth:`_resolve_voided`); then waiting Jahresbelege. A crash
        at any point leaves each step done completely or not at all, so a retry never
        makes a second Sammelbeleg.

        Returns the receipts issued (``[]``: nothing waited), or ``None`` when the unit
        still cannot sign or be asked (everything keeps waiting).
        """
        issued: list[ReceiptResult] = []
        try:
            start = self._waiting_row(register_id, "start")
            if start is not None:
                issued.append(self._issue_waiting_start(start))
            remedy = self._adopt_or_list(register_id)
            if remedy or self.outages.is_open(register_id):
                issued.extend(self._close_outage(register_id, remedy))
            for row in self._waiting_rows(register_id):
                if row["kind"] == "closing":
                    issued.append(self._issue_waiting_closing(row))
                elif row["kind"] != "start":
                    issued.append(self._issue_waiting(row))
        except (FiscalError, SigningError) as exc:
            self._recovery_failed(register_id, exc)
            return None
        return issued

    def _recovery_failed(self, register_id: str, exc: Exception) -> None:
        """Journal and log why the unit answered but recovery failed (once per reason per
        outage, see :meth:`OutageBook.recovery_failed`); the status shows the last one."""
        with self._transaction() as conn:
            self.outages.recovery_failed(conn, register_id, str(exc), self.clock.now())

    def _waiting_row(self, register_id: str, kind: str) -> sqlite3.Row | None:
        with self.db.read_connection() as conn:
            return open_waiting(conn, register_id, kind, None)

    def _issue_waiting_start(self, row: sqlite3.Row) -> ReceiptResult:
        """The waiting Startbeleg; one whose answer was lost is sent again unchanged."""
        setup = _setup_from_json(row["setup"])
        stamp = json.loads(row["setup"]).get("issued_at") or self._stamp_now(setup.timezone)
        with self._transaction() as conn:
            result = self._start_in(conn, setup, stamp)
            if result is not None:
                self._waiting_done(conn, row, result.number)
        if result is None:
            raise WaitsForUnit(_START_SENT.format(register=setup.register_id))
        return result

    def _issue_waiting_closing(self, row: sqlite3.Row) -> ReceiptResult:
        """The Schlussbeleg a chain service may hold, sent again unchanged: its PUT is
        idempotent, so the service answers with what it holds or signs it now."""
        register_id = row["register_id"]
        lost = _intended(json.loads(row["setup"]))
        data = lost.jws.rsplit(".", 1)[0].encode("ascii")
        signature = sign_verified(self.unit_of(register_id), data, timeout=self.sign_timeout)
        payload = split_jws(lost.jws)[0]
        draft = _Draft(register_id, "closing")
        stored, document = _stored(
            draft, lost.number, payload, data, lost.unit_id, lost.turnover, signature, "signed"
        )
        with self._transaction() as conn:
            self._store(conn, stored, document, self.clock.now())
            self._waiting_done(conn, row, stored.number)
        return result_from_parts(
            register_id,
            stored.number,
            "closing",
            "signed",
            payload,
            signature,
            stored.jws,
            document,
        )

    def _issue_waiting(self, row: sqlite3.Row) -> ReceiptResult:
        with self._transaction() as conn:
            reg = self._open_register(conn, row["register_id"])
            draft = _Draft(row["register_id"], row["kind"], period=row["period"])
            result = self._issue_in(conn, reg, draft)
            if result.signature_state == "signed":
                self._waiting_done(conn, row, result.number)
        _raise_if_lost(result)
        return result

    def _waiting_done(self, conn: sqlite3.Connection, row: Any, number: int) -> None:
        now = self.clock.now().isoformat()
        conn.execute(
            "UPDATE waiting_specials SET done_at = ?, number = ? WHERE id = ?",
            (now, number, row["id"]),
        )
        append_event(
            conn,
            kind="special.issued",
            register_id=row["register_id"],
            at=now,
            data={"kind": row["kind"], "period": row["period"], "number": number},
        )

    def _adopt_or_list(self, register_id: str) -> list[sqlite3.Row]:
        """Ask the chain service about each unsigned receipt; adopt those it signed.

        Returns the receipts it does not have (they are reissued).
        """
        with self.db.read_connection() as conn:
            rows = _unresolved(conn, register_id)
        missing = []
        for row in rows:
            unit = self.unit_of(register_id)
            lookup = getattr(unit, "lookup", None)
            data = row["jws"].rsplit(".", 1)[0].encode("ascii")
            deadline = time.monotonic() + self.sign_timeout  # units run on real time
            signature = None if lookup is None else lookup(data, deadline=deadline)
            if signature is None or not verify_rs(unit.identity.public_key(), data, signature):
                missing.append(row)
                continue
            signed = jws_compact(data, signature)
            with self._transaction() as conn:
                self._resolve(conn, row, "adopted", signed_jws=signed)
        return missing

    def _close_outage(self, register_id: str, remedy: list[sqlite3.Row]) -> list[ReceiptResult]:
        """Nullbeleg, Sammelbeleg and reissued sales in one transaction.

        A lost Sammel-/Jahresbeleg in ``remedy`` is not reissued here: the Sammelbeleg
        issued now (the outage is still open) or the waiting Jahresbeleg supersedes it.
        A sale the POS voided is resolved, not reissued (no Nullbeleg if none is left).
        When an answer is lost on the way (a receipt comes back ``unsigned``), what was
        issued is committed (each number stays with its receipt, the reissued sale it
        belongs to included) and the rest waits: :class:`WaitsForUnit` after the commit.
        """
        issued: list[ReceiptResult] = []
        with self._transaction() as conn:
            sales = self._resolve_voided(conn, [r for r in remedy if r["kind"] not in MUST_SIGN])

            def add(draft: _Draft) -> ReceiptResult:
                reg = self._open_register(conn, register_id)
                issued.append(self._issue_in(conn, reg, draft))
                return issued[-1]

            if sales:  # the Nullbeleg first: proof the unit signs again
                add(_Draft(register_id, "null", force_sign=True))
            if not _any_lost(issued) and self.outages.is_open(register_id):
                add(_Draft(register_id, "sammelbeleg"))
            for old, left in sales:  # left: the remedy's Storno a dead process left
                if _any_lost(issued):
                    break
                voided_by = left
                if old["kind"] in COUNTED and voided_by is None:  # a Storno takes it back
                    voided_by = add(_void_draft(old)).number  # (rksv.md 3)
                new = add(dataclasses.replace(self._reissue_draft(conn, old), voided_by=voided_by))
                self._resolve(conn, old, "superseded", replacement=new.number, voided_by=voided_by)
        for result in issued:
            _raise_if_lost(result, always=True)
        return issued

    def _resolve_voided(
        self, conn: sqlite3.Connection, sales: list[sqlite3.Row]
    ) -> list[tuple[sqlite3.Row, int | None]]:
        """Resolve the unsigned sales the POS has voided already; return the others, each
        with the remedy's own Storno of it (:func:`_remedy_storno`), if any.

        A voided sale gets neither a Storno (it would be voided twice) nor a replacement
        (the customer's sale was cancelled): it is superseded by nothing, its Storno named.
        The remedy's own Storno does not count: the remedy had begun, so it is reissued.
        """
        rest = []
        for old in sales:
            remedy = _remedy_storno(conn, old)
            storno = _first_storno(conn, old) if remedy is None else None
            if storno is None:
                rest.append((old, remedy))
            else:
                self._resolve(conn, old, "superseded", voided_by=storno)
        return rest

    def _reissue_draft(self, conn: sqlite3.Connection, old: sqlite3.Row) -> _Draft:
        document = json.loads(old["document"])
        voids = _receipt_row(conn, old["register_id"], old["voids_number"])
        return _Draft(
            old["register_id"],
            old["kind"],
            tuple(old[c] for c in AMOUNT_COLUMNS),
            voids=voids,
            lines=tuple(tuple(x) for x in document["lines"]),
            payments=tuple(tuple(p) for p in document["payments"]),
            cashier=document.get("cashier"),
            force_sign=True,
            reissue_of=old,
        )

    def _resolve(
        self,
        conn: sqlite3.Connection,
        row: sqlite3.Row,
        resolution: str,
        *,
        signed_jws: str | None = None,
        replacement: int | None = None,
        voided_by: int | None = None,
    ) -> None:
        now = self.clock.now().isoformat()
        conn.execute(
            "INSERT INTO receipt_resolutions (register_id, number, resolution, signed_jws,"
            " replacement_number, at) VALUES (?, ?, ?, ?, ?, ?)",
            (row["register_id"], row["number"], resolution, signed_jws, replacement, now),
        )
        data: dict[str, Any] = {
            "number": row["number"],
            "jws": signed_jws,
            "replacement": replacement,
        }
        if voided_by is not None:
            data["voided_by"] = voided_by
        append_event(
            conn, kind=f"receipt.{resolution}", register_id=row["register_id"], at=now, data=data
        )

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
            if self._waiting_row(reg["id"], "yearly") is not None:
                continue
            now_local = self.clock.now().astimezone(ZoneInfo(reg["timezone"]))
            first = _period_of(reg["created_at"], reg["timezone"])
            for period in due_periods(reg["last_closing"], first, now_local):
                kind = "yearly" if period.endswith("-12") else "monthly"
                result = self.request_special(reg["id"], kind, period=period)
                if result is None:
                    break
                issued.append(result)
        return issued


# intents whose receipt is missing, the last one per receipt number (a void one included).
# Numbers are gap-free and last_number moves with each receipt stored, so only an intent
# past its register's last number, or a Startbeleg's of a register not created, can lack
# its receipt: both parts seek an index (0006), and a start costs the same after a million
# intents as after ten (CROSS JOIN keeps the few registers the outer loop).
_INTERRUPTED = (
    "SELECT p.* FROM registers g CROSS JOIN pending_signings p"
    " ON p.register_id = g.id AND p.number > g.last_number"
    " WHERE p.id = (SELECT MAX(q.id) FROM pending_signings q"
    " WHERE q.register_id = p.register_id AND q.number = p.number)"
    " UNION ALL SELECT p.* FROM pending_signings p WHERE p.kind = 'start'"
    " AND NOT EXISTS (SELECT 1 FROM registers g WHERE g.id = p.register_id)"
    " AND p.id = (SELECT MAX(q.id) FROM pending_signings q"
    " WHERE q.register_id = p.register_id AND q.number = p.number)"
    " ORDER BY id"
)
_WAITING_FIELDS = ("id", "register_id", "kind", "period", "reason", "requested_at")
_START_INTERRUPTED = (
    "its Startbeleg was sent to the chain service when the till process ended; it waits and"
    " is sent again unchanged as soon as the service answers (till-agent outage recover)"
)

_CLOSING_SENT = (
    "register {register}: its Schlussbeleg was sent to the chain service, but no answer came;"
    " the register sells nothing more, and the Schlussbeleg is sent again unchanged as soon"
    " as the service answers (till-agent outage recover)"
)

_START_SENT = (
    "register {register}: its Startbeleg was sent to the chain service, but no answer came;"
    " it waits and is sent again unchanged as soon as the service answers (till-agent"
    " outage recover)"
)


def _lost(result: ReceiptResult) -> bool:
    """A receipt that had to be signed came back ``unsigned``: its answer was lost."""
    return result.signature_state != "signed" and result.kind in MUST_SIGN


def _any_lost(results: Sequence[ReceiptResult]) -> bool:
    return any(r.signature_state == "unsigned" for r in results)


def _raise_if_lost(result: ReceiptResult, *, always: bool = False) -> None:
    """After the commit: a lost answer leaves the obligation open (it waits)."""
    if _lost(result) or (always and result.signature_state == "unsigned"):
        raise WaitsForUnit(
            f"the {result.kind} receipt {result.receipt_id} was sent to the chain service,"
            " but no answer came: it keeps its number as an unsigned receipt, and what it"
            " was for waits until the service answers"
        )


def due_periods(last_closing: str | None, first: str, now_local: dt.datetime) -> list[str]:
    """The months ("YYYY-MM") whose closing is due at ``now_local``, oldest first."""
    period = _next_period(last_closing) if last_closing is not None else first
    due = []
    while _closing_time(period, now_local.tzinfo) <= now_local:
        due.append(period)
        period = _next_period(period)
    return due


def _next_period(period: str) -> str:
    year, month = int(period[:4]), int(period[5:7])
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


def _closing_time(period: str, tz: dt.tzinfo | None) -> dt.datetime:
    following = _next_period(period)
    start = dt.datetime(int(following[:4]), int(following[5:7]), 1, tzinfo=tz)
    return start - dt.timedelta(minutes=1)


def _period_of(stamp: str, timezone: str) -> str:
    return dt.datetime.fromisoformat(stamp).astimezone(ZoneInfo(timezone)).strftime("%Y-%m")


def _current_version(conn: sqlite3.Connection, row: Any) -> Any:
    """The receipt that now stands for ``row``: its replacement if it was superseded."""
    if row["signature_state"] != "unsigned":
        return row
    replacement = conn.execute(
        "SELECT r.* FROM receipt_resolutions x JOIN receipts r ON r.register_id = x.register_id"
        " AND r.number = x.replacement_number WHERE x.register_id = ? AND x.number = ?",
        (row["register_id"], row["number"]),
    ).fetchone()
    return row if replacement is None else replacement


def open_waiting(
    conn: sqlite3.Connection, register_id: str, kind: str, period: str | None
) -> sqlite3.Row | None:
    """The register's special receipt of ``kind`` (and ``period``) still waiting, if any."""
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM waiting_specials WHERE register_id = ? AND kind = ?"
        " AND (period IS ? OR ? IS NULL) AND done_at IS NULL ORDER BY id LIMIT 1",
        (register_id, kind, period, period),
    ).fetchone()
    return row


def _intended(intent: dict[str, Any]) -> _Stored:
    """The ``unsigned`` receipt a signing intent holds."""
    fields = dict(intent["receipt"])
    fields.pop("event", None)  # an intent of an earlier version kept it; it is derivable
    return _Stored(**{**fields, "amounts": tuple(fields["amounts"])})


def _remedy_storno(conn: sqlite3.Connection, old: sqlite3.Row) -> int | None:
    """The remedy's Storno of ``old`` when its process ended before ``old`` was reissued
    (stored from its intent): the next remedy reissues ``old`` without a second one.

    Only a remedy makes a Storno without a request_id that is no reissue, and it resolves
    ``old`` in the same transaction unless the process died while the Storno was signed.
    """
    row = conn.execute(
        "SELECT number FROM receipts WHERE register_id = ? AND voids_number = ?"
        " AND kind = 'storno' AND request_id IS NULL"
        " AND json_extract(document, '$.reissue_of') IS NULL",
        (old["register_id"], old["number"]),
    ).fetchone()
    return None if row is None else int(row[0])


def _first_storno(conn: sqlite3.Connection, old: sqlite3.Row) -> int | None:
    """The first receipt that voids ``old`` (the POS Storno, or its reissue), whatever its
    state; ``None`` when none does."""
    row = conn.execute(
        "SELECT min(number) FROM receipts WHERE register_id = ? AND voids_number = ?",
        (old["register_id"], old["number"]),
    ).fetchone()
    return None if row[0] is None else int(row[0])


def _unresolved(conn: sqlite3.Connection, register_id: str | None) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT r.* FROM receipts r LEFT JOIN receipt_resolutions x"
        " ON x.register_id = r.register_id AND x.number = r.number"
        " WHERE r.signature_state = 'unsigned' AND x.number IS NULL"
        " AND (? IS NULL OR r.register_id = ?) ORDER BY r.register_id, r.number",
        (register_id, register_id),
    ).fetchall()


def _setup_json(setup: RegisterSetup, issued_at: str | None = None) -> str:
    """The waiting Startbeleg's register; ``issued_at``: the date of one that was sent."""
    data: dict[str, Any] = {
        "register_id": setup.register_id,
        "units": list(setup.unit_ids),
        "counter_bytes": setup.counter_bytes,
        "aes_key": base64.b64encode(setup.aes_key).decode(),
        "timezone": setup.timezone,
        "receipt_id_format": setup.receipt_id_format,
    }
    if issued_at is not None:
        data["issued_at"] = issued_at
    return canonical_json(data)


def _setup_from_json(text: str) -> RegisterSetup:
    data = json.loads(text)
    return RegisterSetup(
        data["register_id"],
        data["units"],
        data["counter_bytes"],
        base64.b64decode(data["aes_key"]),
        data["timezone"],
        data["receipt_id_format"],
    )


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
    _check_id("receipt_id_format", first)
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


def _unit_zdas(conn: sqlite3.Connection, unit_ids: Sequence[str]) -> list[str]:
    if not unit_ids:
        raise InvalidSale("units", "min-items", "a register needs at least one unit")
    zdas = []
    for unit_id in unit_ids:
        row = conn.execute("SELECT zda FROM units WHERE id = ?", (unit_id,)).fetchone()
        if row is None:
            raise InvalidSale("units", "unit-unknown", f"no signature unit {unit_id!r}")
        zdas.append(str(row[0]))
    return zdas


def _receipt_row(
    conn: sqlite3.Connection, register_id: str, number: int | None
) -> sqlite3.Row | None:
    """Receipt ``number`` of ``register_id`` (``None``: no such receipt, or no number)."""
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM receipts WHERE register_id = ? AND number = ?", (register_id, number)
    ).fetchone()
    return row


def _voidable(conn: sqlite3.Connection, register_id: str, number: int | None) -> sqlite3.Row:
    row = _receipt_row(conn, register_id, number)
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


def _void_draft(old: sqlite3.Row) -> _Draft:
    """The signed Storno that takes back a counted receipt the remedy supersedes.

    The unsigned original stays in the DEP and in the counter (a marker receipt counts);
    without this Storno its replacement would count the sale a second time. A superseded
    Storno is reversed the same way (positive amounts), then reissued itself.
    """
    document = json.loads(old["document"])
    return _Draft(
        old["register_id"],
        "storno",
        tuple(-old[c] for c in AMOUNT_COLUMNS),
        voids=old,
        lines=tuple((t, q, p, v, -c) for t, q, p, v, c in _stored_lines(old)),
        payments=tuple((m, -a) for m, a in document["payments"]),
        cashier=document.get("cashier"),
        force_sign=True,
    )


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


def _local_stamp(now: dt.datetime, timezone: str) -> str:
    """Field 4 of a receipt: ``now`` as local time of ``timezone``, whole seconds."""
    return now.astimezone(_zone(timezone)).replace(tzinfo=None, microsecond=0).isoformat()


def _stored(  # noqa: PLR0917 - partial() fixes the receipt, the signing adds the rest
    draft: _Draft,
    number: int,
    payload: Payload,
    data: bytes,
    unit_id: str,
    turnover: int,
    signature: bytes,
    state: str,
) -> tuple[_Stored, dict[str, Any]]:
    """The receipt to store once ``data`` is signed (or not: ``state``), and its document."""
    jws = jws_compact(data, signature)
    document = _document(draft.register_id, draft, payload, state)
    voids = None if draft.voids is None else draft.voids["number"]
    stored = _Stored(
        draft.register_id,
        number,
        payload.receipt_id,
        draft.kind,
        draft.request_id,
        draft.sale_hash,
        payload.issued_at,
        draft.amounts,
        turnover,
        jws,
        state,
        unit_id,
        voids,
        canonical_json(document),
    )
    return stored, document


def _event(stored: _Stored, document: dict[str, Any]) -> dict[str, Any]:
    """The ``receipt.issued`` journal event of ``stored``, whose document is ``document``."""
    return {
        "number": stored.number,
        "receipt_id": stored.receipt_id,
        "kind": stored.kind,
        "jws": stored.jws,
        "signature_state": stored.state,
        "unit_id": stored.unit_id,
        "voids_number": stored.voids,
        "request_id": stored.request_id,
        "turnover_cents": stored.turnover,
        "issued_at": stored.issued_at,
        "amounts": list(stored.amounts),
        # the sale itself; the printed text is derivable and only its hash is journaled
        "lines": document["lines"],
        "payments": document["payments"],
        "document_sha256": hashlib.sha256(stored.document.encode()).hexdigest(),
    }


def _document(register_id: str, draft: _Draft, payload: Payload, state: str) -> dict[str, Any]:
    facts = TextFacts(
        register_id,
        payload.receipt_id,
        draft.kind,
        payload.issued_at,
        state,
        draft.amounts,
        draft.lines,
        draft.payments,
        draft.cashier,
        None if draft.voids is None else draft.voids["receipt_id"],
        None if draft.reissue_of is None else draft.reissue_of["receipt_id"],
    )
    document: dict[str, Any] = {
        "lines": [list(ln) for ln in draft.lines],
        "payments": [list(p) for p in draft.payments],
        "cashier": draft.cashier,
        "text": render_lines(facts),
    }
    if draft.reissue_of is not None:
        document["reissue_of"] = draft.reissue_of["number"]
    if draft.period is not None:
        document["period"] = draft.period
    return document


def _check_id(field_name: str, value: str) -> None:
    if not value or "_" in value or len(value) > 64 or not value.isprintable():
        raise InvalidSale(
            field_name, "id-format", f"{value!r} must be 1-64 printable characters without '_'"
        )


def _sum_by_vat(lines: Sequence[Line]) -> Amounts:
    sums = dict.fromkeys(_VATS, 0)
    for *_, vat, total in lines:
        sums[vat] += total
    return (sums["normal"], sums["reduced1"], sums["reduced2"], sums["zero"], sums["special"])


def _stored_lines(row: sqlite3.Row) -> list[Line]:
    return [tuple(x) for x in json.loads(row["document"])["lines"]]
