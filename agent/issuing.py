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
(the public API) and :class:`agent.recovery.Recovery` issue through it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from agent.at_rksv import (
    FALLBACK_SIGNATURE,
    STORNO_MARKER,
    TRAINING_MARKER,
    Payload,
    cents_to_amount,
    chain_value,
    encrypt_counter,
    signing_input,
)
from agent.checks import CHECK_KINDS, record_due
from agent.clock import Clock
from agent.contract import ReceiptResult
from agent.errors import (
    FiscalError,
    InvalidSale,
    NotFound,
    OutcomeUnknown,
    SigningError,
    StorageError,
    WaitsForUnit,
)
from agent.interrupted import store_interrupted
from agent.outage_watch import OutageWatch, Thresholds
from agent.outages import OutageBook
from agent.receipt_records import (
    COUNTED,
    MUST_SIGN,
    Draft,
    Stored,
    check_id,
    receipt_event,
    stored_receipt,
)
from agent.receipt_view import result_from_parts
from agent.registers import (
    CLOSING_SENT,
    RegisterSetup,
    check_new_register,
    create_register,
    register_row,
    setup_json,
    start_unit,
)
from agent.remedy import supersede_lost, unresolved
from agent.signing import SignatureUnit, sign_verified
from agent.signing.registry import UnitRegistry
from agent.waiting import any_waiting, open_waiting, record_waiting, start_waits
from storage.db import TillDB
from storage.journal import append_event, canonical_json

__all__ = ["Issuing"]

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


class Issuing:
    """The write transactions of one till database and the durable path of its receipts.

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
        # ticked by the running agent, and ages an outage as its Sammelbeleg closes it
        watch = OutageWatch(self.writer, clock, thresholds)
        with self.writer.transaction() as conn:
            self.outages = OutageBook(conn, watch)
        # an intent left by a transaction that rolled back after committing it
        self._intent_unsettled = True  # and at start: one left by a process that died
        with self.transaction(settle_now=False):
            pass

    @contextmanager
    def transaction(self, *, settle_now: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction whose in-memory outage changes follow its fate.

        It first stores what an earlier one left behind
        (:func:`agent.interrupted.store_interrupted`); after a refusal (``settle_now``) that
        happens at once, in a transaction of its own.
        """
        with self.lock:  # settle() must see only this transaction's outage changes
            try:
                with self.writer.transaction() as conn:
                    if self._intent_unsettled:
                        store_interrupted(self, conn)
                    yield conn
            except BaseException as exc:
                self.outages.settle(committed=False)
                if settle_now and self._intent_unsettled and isinstance(exc, FiscalError):
                    # e.g. a Schlussbeleg that now waits; if this fails, the next write retries
                    with (
                        contextlib.suppress(FiscalError, StorageError),
                        self.transaction(settle_now=False),
                    ):
                        pass
                raise
            self.outages.settle(committed=True)
            self._intent_unsettled = False

    def stamp_now(self, timezone: str) -> str:
        """Now, as a receipt of a register in ``timezone`` is dated (field 4)."""
        return _local_stamp(self.clock.now(), timezone)

    def start_in(
        self,
        conn: sqlite3.Connection,
        setup: RegisterSetup,
        stamp: str,
        *,
        receipt_id: str | None = None,
        unit_position: int | None = None,
    ) -> ReceiptResult | None:
        """Create the register and issue its Startbeleg dated ``stamp``; ``receipt_id`` and
        ``unit_position``: a scenario replay's (default: from the format, the first unit).

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
        intent: _Intent | None = None
        voids: list[SigningError] = []  # what the Startbeleg's intent is told, if anything
        unit_id = start_unit(setup, unit_position)
        if self.units.get(conn, unit_id).capabilities.keeps_chain:
            # before the register exists: a commit while the service signs would commit it
            self._record_intent(conn, setup.register_id, 1, "start", {"setup": json.loads(pending)})
            intent = functools.partial(_start_intent, voids)
        with self.writer.savepoint("startbeleg"):
            try:
                create_register(conn, setup, self.clock.now().isoformat(), closed)
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
            self._void_intent(conn, setup.register_id, 1, void)
        if not isinstance(refused.__cause__, OutcomeUnknown):
            raise refused
        start_waits(conn, setup.register_id, pending, str(refused), self.clock.now().isoformat())
        return None

    def issue_in(
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
        elif intent is None:
            parts = functools.partial(
                stored_receipt, draft, number, payload, data, unit_id, turnover
            )
            intent = functools.partial(self._receipt_intent, conn, draft, number, parts)
        signature, state = self._sign(conn, unit, data, draft, number, now, intent)
        stored, document = stored_receipt(
            draft, number, payload, data, unit_id, turnover, signature, state
        )
        at = self.clock.now()  # after signing, which may have waited for its deadline
        self.store(conn, stored, document, at)
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
        :func:`agent.interrupted.store_interrupted`.

        The transaction goes on: a group commit's earlier sales and a remedy's earlier
        receipts are committed now, each complete.
        """
        conn.execute(
            "INSERT INTO pending_signings (register_id, number, kind, intent, at)"
            " VALUES (?, ?, ?, ?, ?)",
            (register_id, number, kind, canonical_json(intent), self.clock.now().isoformat()),
        )
        self.writer.commit_so_far()
        self.outages.settle(committed=True)
        self._intent_unsettled = True  # until the transaction commits

    def _void_intent(
        self, conn: sqlite3.Connection, register_id: str, number: int, exc: Exception
    ) -> None:
        """The service answered that it signed nothing: the intent before is void (the
        receipt is not stored, so its number is free)."""
        self._record_intent(conn, register_id, number, "void", {"void": str(exc)})

    def store(
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
        and the Startbeleg or Schlussbeleg waits to be sent again unchanged (:meth:`start_in`;
        :func:`agent.interrupted.store_interrupted` once this transaction has rolled back)."""
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
    """The Startbeleg's :data:`_Intent`: :meth:`Issuing.start_in` committed it
    already, and records a refusal itself once the register it created is undone."""
    if refused is not None:
        voids.append(refused)


def _local_stamp(now: dt.datetime, timezone: str) -> str:
    """Field 4 of a receipt: ``now`` as local time of ``timezone``, whole seconds."""
    return now.astimezone(_zone(timezone)).replace(tzinfo=None, microsecond=0).isoformat()
