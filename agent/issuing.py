"""The durable path: write transactions and the receipts numbered, signed and stored in them.

The durable order (DESIGN.md invariant 1) is the shape of :meth:`Issuing.issue_in`:
validate -> ``BEGIN IMMEDIATE`` -> allocate the number -> sign (or fallback) -> insert
receipt and journal event, update the register -> ``COMMIT`` (WAL, synchronous=FULL) ->
return. Nothing is returned, printed or acknowledged before the commit; a crash before it
leaves no trace, because the number is allocated inside the transaction.

:class:`Issuing` owns the write transactions (one at a time; the outage book follows
their fate) and keeps numbers gap-free across a process that died while a chain service
signed: each transaction first stores what such a process left
(:func:`agent.interrupted.store_interrupted`). :class:`agent.receipts.ReceiptService`
(the public API) and :class:`agent.recovery.Recovery` issue through it. Its steps are
modules of their own: the receipt's fields (:mod:`agent.receipt_records`), the signing
with a chain service's intents (:mod:`agent.signing_step`), the storing
(:mod:`agent.storing`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from agent.at_rksv import Payload, cents_to_amount, chain_value, signing_input
from agent.checks import CHECK_KINDS, record_due
from agent.clock import Clock
from agent.closings import CLOSING_NAMES, closing_kind, due_for
from agent.contract import ReceiptResult
from agent.errors import (
    FiscalError,
    InvalidSale,
    NotFound,
    OutcomeUnknown,
    RegisterStateError,
    SigningError,
    StorageError,
    WaitsForUnit,
)
from agent.interrupted import store_interrupted
from agent.metrics import ReceiptCounts
from agent.outage_watch import OutageWatch, Thresholds
from agent.outages import OutageBook
from agent.receipt_records import (
    COUNTED,
    Draft,
    Stored,
    check_id,
    counter_field,
    local_stamp,
    receipt_date,
    stored_receipt,
)
from agent.receipt_view import result_from_parts
from agent.registers import (
    FAILED_OK_HINT,
    RegisterSetup,
    check_new_register,
    create_register,
    register_row,
    setup_from_json,
    setup_json,
    start_unit,
)
from agent.remedy import unresolved
from agent.signing import SignatureUnit
from agent.signing.registry import UnitRegistry
from agent.signing_step import Intent, SigningStep, start_intent
from agent.storing import store_receipt
from agent.waiting import any_waiting, open_waiting, start_waits
from storage.db import TillDB

__all__ = ["Issuing"]

# the way out of a waiting Jahresbeleg when the unit is down for good (the Schlussbeleg's
# refusal names it: --failed-ok would not help)
_YEARLY_WAITS_HINT = (
    "a unit down for good signs neither: switch the register to a working unit"
    " (till-agent unit switch {register} UNIT, see README 'A signature unit failed for"
    " good'), whose recovery (till-agent outage recover {register}) issues the Sammelbeleg"
    " and the Jahresbeleg signed, then issue the Schlussbeleg"
)


class Issuing:
    """The write transactions of one till database and the durable path of its receipts.

    Made by :class:`agent.receipts.ReceiptService` from its arguments (documented there,
    its defaults filled in), and shared with :class:`agent.recovery.Recovery`.
    """

    def __init__(
        self,
        db: TillDB,
        units: UnitRegistry,
        *,
        clock: Clock,
        sign_timeout: float,
        thresholds: Thresholds | None,
    ) -> None:
        self.db = db
        self.units = units
        self.clock = clock
        self.sign_timeout = sign_timeout
        self.writer = db.write_connection()
        self.lock = threading.RLock()  # held by each write transaction
        self.issued = ReceiptCounts()  # for GET /metrics: follows the transactions' fate
        # a Schlussbeleg waits for the due closings (off: a scenario replay, its own dates)
        self.closings_first = True
        # ticked by the running agent, and ages an outage as its Sammelbeleg closes it
        watch = OutageWatch(self.writer, clock, thresholds)
        with self.writer.transaction() as conn:
            self.outages = OutageBook(conn, watch)
        self._signing = SigningStep(self.writer, self.outages, self.issued, clock, sign_timeout)
        with self.transaction(settle_now=False):  # what a process that died left
            pass

    @contextmanager
    def transaction(self, *, settle_now: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction whose in-memory outage changes follow its fate.

        It first stores what an earlier one left behind
        (:func:`agent.interrupted.store_interrupted`) and opens the outage a refused
        receipt met (a Jahresbeleg that waits: DESIGN.md invariant 4); after a refusal
        (``settle_now``) that happens at once, in a transaction of its own.
        """
        with self.lock:  # settle() must see only this transaction's outage changes
            try:
                with self.writer.transaction() as conn:
                    if self._signing.intent_unsettled:
                        store_interrupted(self, conn)
                    self._signing.open_refused_outage(conn)
                    yield conn
                    self._signing.open_refused_outage(conn)  # a refusal the caller went past
            except BaseException as exc:
                self.outages.settle(committed=False)
                self.issued.settle(committed=False)
                unsettled = self._signing.intent_unsettled
                unsettled |= self._signing.refused_outage is not None
                if settle_now and unsettled and isinstance(exc, FiscalError):
                    # e.g. a Schlussbeleg that now waits; if this fails, the next write retries
                    with (
                        contextlib.suppress(FiscalError, StorageError),
                        self.transaction(settle_now=False),
                    ):
                        pass
                raise
            self.outages.settle(committed=True)
            self.issued.settle(committed=True)
            self._signing.intent_unsettled = False
            self._signing.refused_outage = None  # opened, and now committed

    def stamp_now(self, timezone: str) -> str:
        """Now, as a receipt of a register in ``timezone`` is dated (field 4)."""
        return local_stamp(self.clock.now(), timezone)

    def start_in(
        self,
        conn: sqlite3.Connection,
        setup: RegisterSetup,
        stamp: str,
        *,
        receipt_id: str | None = None,
        unit_position: int | None = None,
        created_at: str | None = None,
    ) -> ReceiptResult | None:
        """Create the register and issue its Startbeleg dated ``stamp``; ``receipt_id`` and
        ``unit_position``: a scenario replay's (default: from the format, the first unit);
        ``created_at``: when a Startbeleg that waited was first asked for (its months are
        closed from then on; default: now).

        A chain service whose answer is lost (``OutcomeUnknown``) may hold the Startbeleg
        signed: then nothing is created, and the waiting Startbeleg (the open one, or a new
        one) keeps ``stamp``, ``receipt_id`` and ``unit_position``, so recovery sends the
        very same signing input again (the service's PUT is idempotent) and number 1 is
        never signed twice. ``None`` then. The Startbeleg is never committed with the
        failure marker (rksv.md 5). For a chain service what it waits with is committed
        first (an intent), so a process that dies while the service signs leaves the
        register waiting the same way.
        """
        closed = check_new_register(conn, setup)
        pending = setup_json(setup, stamp, receipt_id=receipt_id, unit_position=unit_position)
        intent: Intent | None = None
        voids: list[SigningError] = []  # what the Startbeleg's intent is told, if anything
        unit_id = start_unit(setup, unit_position)
        if self.units.get(conn, unit_id).capabilities.keeps_chain:
            # before the register exists: a commit while the service signs would commit it
            setup_intent = {"setup": json.loads(pending)}
            self._signing.record_intent(conn, setup.register_id, 1, "start", setup_intent)
            intent = start_intent(voids)
        with self.writer.savepoint("startbeleg"):
            try:
                created = created_at or self.clock.now().isoformat()
                create_register(conn, setup, created, closed)
                reg = register_row(conn, setup.register_id)
                draft = Draft(
                    setup.register_id,
                    "start",
                    receipt_id=receipt_id,
                    issued_at=stamp,
                    unit_position=unit_position,
                )
                return self.issue_in(conn, reg, draft, intent)
            except WaitsForUnit as exc:
                conn.execute("ROLLBACK TO startbeleg")
                refused = exc
        for void in voids:  # recorded (and committed) only once the register is undone
            self._signing.void_intent(conn, setup.register_id, 1, void)
        if not isinstance(refused.__cause__, OutcomeUnknown):
            raise refused
        start_waits(conn, setup.register_id, pending, str(refused), self.clock.now().isoformat())
        return None

    def issue_in(
        self,
        conn: sqlite3.Connection,
        reg: sqlite3.Row,
        draft: Draft,
        intent: Intent | None = None,
    ) -> ReceiptResult:
        """Number, sign and store ``draft``; ``intent``: a chain signing's own (default: the
        ``unsigned`` receipt a lost answer would leave,
        :meth:`agent.signing_step.SigningStep.receipt_intent`); a local unit has none."""
        register_id, number = reg["id"], reg["last_number"] + 1  # allocated inside the txn
        if draft.kind == "closing":
            self._check_closable(conn, reg, failed_ok=draft.failed_ok)
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
            receipt_date(reg, draft, now),
            tuple(map(cents_to_amount, draft.amounts)),  # type: ignore[arg-type]
            counter_field(reg, draft.kind, receipt_id, turnover),
            identity.serial,
            chain_value(reg["last_jws"], register_id),
        )
        data = signing_input(payload)
        unit_id = identity.unit_id
        if not unit.capabilities.keeps_chain:
            intent = None  # a local unit signs in-process: nothing is kept elsewhere
        elif intent is None:
            if draft.kind == "start":  # its default intent would commit the register it makes
                raise TypeError("a Startbeleg is issued through start_in, which keeps its intent")
            parts = functools.partial(
                stored_receipt, draft, number, payload, data, unit_id, turnover
            )
            intent = self._signing.receipt_intent(conn, draft, number, parts)
        signature, state = self._signing.sign(conn, unit, data, draft, number, now, intent)
        stored, document = stored_receipt(
            draft, number, payload, data, unit_id, turnover, signature, state
        )
        at = self.clock.now()  # after signing, which may have waited for its deadline
        self.store(conn, stored, document, at)
        # the operator's check, rksv.md 6 (and the report of a Schlussbeleg with the marker)
        if draft.kind in CHECK_KINDS and (state == "signed" or draft.kind == "closing"):
            record_due(  # the development unit's implies none (it logs why)
                conn,
                register_id,
                draft.kind,
                number,
                payload.issued_at,
                draft.period,
                at,
                unit_id=unit_id,
            )
        return result_from_parts(
            register_id, number, draft.kind, state, payload, signature, stored.jws, document
        )

    def store(
        self, conn: sqlite3.Connection, stored: Stored, document: dict[str, Any], at: dt.datetime
    ) -> None:
        """Insert the receipt and its journal event, move the register on to it and settle
        what it settles (:func:`agent.storing.store_receipt`)."""
        store_receipt(conn, self.outages, stored, document, at)
        self.issued.stored(stored.register_id, stored.kind, stored.state)

    def _check_closable(
        self, conn: sqlite3.Connection, reg: sqlite3.Row, *, failed_ok: bool
    ) -> None:
        """Refuse a Schlussbeleg while the register waits for its unit: after it the
        register issues nothing, so an open outage could never get its Sammelbeleg (nor an
        unsigned receipt its remedy, nor a waiting Jahresbeleg its turn); and while a
        month that is over has no Monats-/Jahresbeleg yet (it would never get one).

        ``failed_ok``: the operator decommissions a register whose unit is down for good:
        an open outage ends with its Schlussbeleg, which carries the failure marker
        (rksv.md 5 allows it); the rest still waits (a Jahresbeleg must be signed)."""
        register_id = reg["id"]
        hint = ""
        if self.outages.is_open(register_id) and not failed_ok:
            why = "has an open outage that only its signed Sammelbeleg closes"
            hint = "; " + FAILED_OK_HINT.format(register=register_id)
        elif unresolved(conn, register_id):
            why = "has unsigned receipts waiting for their remedy"
        elif open_waiting(conn, register_id, "yearly", None) is not None:
            why = (
                "has a special receipt waiting for the unit, a Jahresbeleg, which must be"
                " validly signed (rksv.md 5, BMF notice 18.11.2016: unlike a Monats- or"
                " Schlussbeleg it may not carry the failure marker) and could not be issued"
                " after the Schlussbeleg"
            )
            hint = "; " + _YEARLY_WAITS_HINT.format(register=register_id)
        elif any_waiting(conn, register_id):
            why = "has a special receipt waiting for the unit"
        else:
            self._check_closed_months(reg)
            return
        raise WaitsForUnit(
            f"register {register_id} {why}: the Schlussbeleg waits until the unit answers"
            f" and recovery is done (till-agent outage recover); nothing was issued{hint}"
        )

    def _check_closed_months(self, reg: sqlite3.Row) -> None:
        if not self.closings_first:  # a scenario replay: its dates are the scenario's
            return
        if due := due_for(reg, self.clock.now()):
            raise RegisterStateError(
                f"register {reg['id']}: the {CLOSING_NAMES[closing_kind(due[0])]} of"
                f" {', '.join(due)} is due"
                " and not issued yet; it comes before the Schlussbeleg; nothing was issued"
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
                sent = start["setup"]  # (a replay may have named its unit)
                position = json.loads(sent).get("unit_position")
                return self.units.get(conn, start_unit(setup_from_json(sent), position))
            return self.units.get(conn, row[0])
