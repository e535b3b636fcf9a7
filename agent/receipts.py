"""The receipt service: turns sales into signed, chained, durably journaled receipts.

The durable order (DESIGN.md invariant 1) is the shape of :meth:`ReceiptService._issue_in`:
validate -> ``BEGIN IMMEDIATE`` -> allocate the number -> sign (or fallback) -> insert
receipt and journal event, update the register -> ``COMMIT`` (WAL, synchronous=FULL) ->
return. Nothing is returned, printed or acknowledged before the commit; a crash before it
leaves no trace, because the number is allocated inside the transaction.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.at_rksv import (
    FALLBACK_SIGNATURE,
    STORNO_MARKER,
    TRAINING_MARKER,
    Payload,
    cents_to_amount,
    chain_value,
    encrypt_counter,
    jws_compact,
    signing_input,
)
from agent.clock import Clock, SystemClock
from agent.contract import ReceiptResult, Sale, line_total_cents, parse_sale
from agent.errors import FiscalError, InvalidSale, NotFound, SigningError
from agent.outages import OutageBook
from agent.receipt_text import TextFacts, render_lines
from agent.receipt_view import AMOUNT_COLUMNS, Amounts, result_from_parts, result_from_row
from agent.signing import SignatureUnit, sign_verified
from agent.signing.registry import UnitRegistry
from storage.db import TillDB
from storage.journal import append_event, canonical_json

__all__ = ["KINDS", "MUST_SIGN", "ReceiptService", "RegisterSetup"]

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
ZERO: Amounts = (0, 0, 0, 0, 0)
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


class ReceiptService:
    """Issues receipts for the registers of one till database.

    Args:
        db: the open till database (this process must hold the writer lock).
        units: the open signature units.
        clock: wall time for receipt dates.
        sign_timeout: the deadline of every signing call, in seconds.
    """

    def __init__(
        self,
        db: TillDB,
        units: UnitRegistry,
        *,
        clock: Clock | None = None,
        sign_timeout: float = 3.0,
    ) -> None:
        self.db = db
        self.units = units
        self.clock: Clock = clock or SystemClock()
        self.sign_timeout = sign_timeout
        self._writer = db.write_connection()
        self._lock = threading.RLock()
        with self._writer.transaction() as conn:
            self.outages = OutageBook(conn)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction whose in-memory outage changes follow its fate."""
        with self._lock:  # settle() must see only this transaction's outage changes
            try:
                with self._writer.transaction() as conn:
                    yield conn
            except BaseException:
                self.outages.settle(committed=False)
                raise
            self.outages.settle(committed=True)

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
        with self._transaction() as conn:
            self._create_register(conn, setup)
            reg = self._register_row(conn, setup.register_id)
            draft = _Draft(
                setup.register_id,
                "start",
                receipt_id=receipt_id,
                issued_at=issued_at,
                unit_position=unit_position,
            )
            return self._issue_in(conn, reg, draft)

    def issue(self, sale: Sale | bytes | str | dict[str, Any]) -> ReceiptResult:
        """Issue the receipt for a POS sale; a repeated ``request_id`` returns the stored one.

        Raises:
            InvalidSale: the sale breaks a rule (nothing was consumed).
        """
        if not isinstance(sale, Sale):
            sale = parse_sale(sale)
        sale_hash = hashlib.sha256(canonical_json(sale.model_dump()).encode()).hexdigest()
        with self._transaction() as conn:
            stored = conn.execute(
                "SELECT * FROM receipts WHERE register_id = ? AND request_id = ?",
                (sale.register_id, sale.request_id),
            ).fetchone()
            if stored is not None:
                if stored["sale_hash"] != sale_hash:
                    raise InvalidSale(
                        "request_id",
                        "request-id-reused",
                        "this request_id was already used for a different sale",
                    )
                return result_from_row(stored)
            reg = self._open_register(conn, sale.register_id)
            return self._issue_in(conn, reg, self._draft_for_sale(conn, reg, sale, sale_hash))

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

        ``amounts`` and the kinds standard/storno/training serve the scenario replay.
        """
        if kind not in KINDS or kind == "start":
            raise InvalidSale("kind", "allowed-values", f"cannot issue a {kind!r} receipt here")
        with self._transaction() as conn:
            reg = self._open_register(conn, register_id)
            draft = _Draft(
                register_id,
                kind,
                amounts=amounts,
                receipt_id=receipt_id,
                issued_at=issued_at,
                unit_position=unit_position,
                request_id=request_id,
            )
            return self._issue_in(conn, reg, draft)

    def get(self, register_id: str, number: int) -> ReceiptResult:
        """The stored receipt ``number`` of ``register_id``; raises ``NotFound``."""
        with self._writer.transaction() as conn:
            row = conn.execute(
                "SELECT * FROM receipts WHERE register_id = ? AND number = ?",
                (register_id, number),
            ).fetchone()
        if row is None:
            raise NotFound(f"register {register_id} has no receipt {number}")
        return result_from_row(row)

    # -- registers ------------------------------------------------------------------------

    def _create_register(self, conn: sqlite3.Connection, setup: RegisterSetup) -> None:
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
            raise InvalidSale(
                "register",
                "register-unknown",
                f"register {register_id!r} is not initialized on this till",
            )
        return row

    def _open_register(self, conn: sqlite3.Connection, register_id: str) -> sqlite3.Row:
        reg = self._register_row(conn, register_id)
        if reg["state"] != "active":
            raise InvalidSale(
                "register",
                "register-closed",
                f"register {register_id} was closed by its Schlussbeleg",
            )
        return reg

    # -- sales ----------------------------------------------------------------------------

    def _draft_for_sale(
        self, conn: sqlite3.Connection, reg: sqlite3.Row, sale: Sale, sale_hash: str
    ) -> _Draft:
        payments = tuple((p.method, _to_cents(p.amount)) for p in sale.payments)
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

    def _issue_in(self, conn: sqlite3.Connection, reg: sqlite3.Row, draft: _Draft) -> ReceiptResult:
        register_id, number = reg["id"], reg["last_number"] + 1  # allocated inside the txn
        receipt_id = draft.receipt_id or reg["receipt_id_format"].format(number=number)
        _check_id("receipt_id", receipt_id)
        unit = self._unit_for(conn, reg, draft.unit_position)
        counted = draft.kind in ("standard", "storno")
        turnover = reg["turnover_cents"] + (sum(draft.amounts) if counted else 0)
        payload = Payload(
            unit.identity.suite,
            register_id,
            receipt_id,
            self._issued_at(reg, draft),
            tuple(cents_to_amount(a) for a in draft.amounts),  # type: ignore[arg-type]
            _counter_field(reg, draft.kind, receipt_id, turnover),
            unit.identity.serial,
            chain_value(reg["last_jws"], register_id),
        )
        signature, state = self._sign(conn, unit, payload, draft, number)
        jws = jws_compact(payload, signature)
        document = _document(register_id, draft, payload, state)
        document_json = canonical_json(document)
        voids = None if draft.voids is None else draft.voids["number"]
        event = {
            "number": number,
            "receipt_id": receipt_id,
            "kind": draft.kind,
            "jws": jws,
            "signature_state": state,
            "unit_id": unit.identity.unit_id,
            "voids_number": voids,
            "request_id": draft.request_id,
            "turnover_cents": turnover,
            "issued_at": payload.issued_at,
            "amounts": list(draft.amounts),
            # the sale itself; the printed text is derivable and only its hash is journaled
            "lines": document["lines"],
            "payments": document["payments"],
            "document_sha256": hashlib.sha256(document_json.encode()).hexdigest(),
        }
        seq = append_event(
            conn,
            kind="receipt.issued",
            register_id=register_id,
            at=self.clock.now().isoformat(),
            data=event,
        )
        conn.execute(
            _INSERT_RECEIPT,
            (
                register_id,
                number,
                receipt_id,
                draft.kind,
                draft.request_id,
                draft.sale_hash,
                payload.issued_at,
                *draft.amounts,
                turnover,
                jws,
                state,
                unit.identity.unit_id,
                voids,
                document_json,
                seq,
            ),
        )
        closed = "closed" if draft.kind == "closing" else "active"
        conn.execute(
            _UPDATE_REGISTER, (number, turnover, jws, payload.issued_at, closed, register_id)
        )
        if draft.kind == "sammelbeleg" and self.outages.is_open(register_id):
            self.outages.close(conn, register_id, number, self.clock.now())
        return result_from_parts(
            register_id, number, draft.kind, state, payload, signature, jws, document
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

    def _issued_at(self, reg: sqlite3.Row, draft: _Draft) -> str:
        if draft.issued_at is not None:
            stamp = draft.issued_at
        else:
            local = self.clock.now().astimezone(ZoneInfo(reg["timezone"]))
            stamp = local.strftime("%Y-%m-%dT%H:%M:%S")
        # dates never go back within a register (a clock set back must not reorder the DEP)
        last = reg["last_issued_at"]
        return last if last is not None and stamp < last else stamp

    def _sign(
        self,
        conn: sqlite3.Connection,
        unit: SignatureUnit,
        payload: Payload,
        draft: _Draft,
        number: int,
    ) -> tuple[bytes, str]:
        register_id, kind = payload.register_id, draft.kind
        if self.outages.is_open(register_id) and kind != "sammelbeleg":
            # the breaker is open: no call to the unit, the probe finds out when it is back
            if kind in MUST_SIGN:
                raise FiscalError(f"a {kind} receipt must be signed: it waits for the unit")
            self.outages.affected(conn, register_id, number, self.clock.now())
            return FALLBACK_SIGNATURE, "fallback"
        try:
            return sign_verified(unit, signing_input(payload), timeout=self.sign_timeout), "signed"
        except SigningError as exc:
            if kind in MUST_SIGN:
                raise FiscalError(
                    f"a {kind} receipt must be validly signed and the unit failed: {exc}"
                ) from exc
            self.outages.open(
                conn,
                register_id=register_id,
                unit_id=unit.identity.unit_id,
                cause=str(exc),
                number=number,
                at=self.clock.now(),
            )
            return FALLBACK_SIGNATURE, "fallback"

    # -- recovery -------------------------------------------------------------------------

    def unit_of(self, register_id: str) -> SignatureUnit:
        """The active unit of a register (for the probe)."""
        with self._writer.transaction() as conn:
            reg = self._register_row(conn, register_id)
            return self.units.get(conn, reg["active_unit"])

    def record_probe(self, register_id: str, ok: bool, detail: str) -> None:
        with self._transaction() as conn:
            if self.outages.is_open(register_id):
                self.outages.probed(conn, register_id, ok, detail, self.clock.now())

    def recover(self, register_id: str) -> ReceiptResult | None:
        """Issue the signed Sammelbeleg and close the outage, in one transaction.

        Returns the Sammelbeleg, or ``None`` when there is no open outage or the unit
        still cannot sign (the outage stays open).
        """
        if not self.outages.is_open(register_id):
            return None
        try:
            return self.issue_special(register_id, "sammelbeleg")
        except FiscalError:
            return None


_REGISTER_ID = re.compile(r"[A-Za-z0-9.:-]{1,64}")


def _check_setup(setup: RegisterSetup) -> None:
    """Refuse a register that could never sell, before anything is written."""
    if not _REGISTER_ID.fullmatch(setup.register_id):
        raise InvalidSale(
            "register",
            "id-format",
            "a Kassen-ID is 1-64 of letters, digits, '.', ':' and '-' (no '_')",
        )
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


def _voidable(conn: sqlite3.Connection, register_id: str, number: int | None) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM receipts WHERE register_id = ? AND number = ?", (register_id, number)
    ).fetchone()
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
    key = base64.b64decode(reg["aes_key"])
    try:
        return encrypt_counter(key, reg["id"], receipt_id, turnover, reg["counter_bytes"])
    except ValueError as exc:
        raise FiscalError(
            f"register {reg['id']}: the turnover counter no longer fits "
            f"{reg['counter_bytes']} bytes; close the register and start a new one"
        ) from exc


def _document(register_id: str, draft: _Draft, payload: Payload, state: str) -> dict[str, Any]:
    facts = TextFacts(
        register_id,
        payload.receipt_id,
        draft.kind,
        payload.issued_at,
        state,
        sum(draft.amounts),
        draft.lines,
        draft.payments,
        draft.cashier,
        None if draft.voids is None else draft.voids["receipt_id"],
    )
    return {
        "lines": [list(ln) for ln in draft.lines],
        "payments": [list(p) for p in draft.payments],
        "cashier": draft.cashier,
        "text": render_lines(facts),
    }


def _check_id(field_name: str, value: str) -> None:
    if not value or "_" in value or len(value) > 64 or not value.isprintable():
        raise InvalidSale(
            field_name, "id-format", f"{value!r} must be 1-64 printable characters without '_'"
        )


def _to_cents(money: str) -> int:
    whole, _, frac = money.lstrip("-").partition(".")
    cents = int(whole) * 100 + int((frac + "00")[:2])
    return -cents if money.startswith("-") else cents


def _sum_by_vat(lines: Sequence[Line]) -> Amounts:
    sums = dict.fromkeys(_VATS, 0)
    for *_, vat, total in lines:
        sums[vat] += total
    return (sums["normal"], sums["reduced1"], sums["reduced2"], sums["zero"], sums["special"])


def _stored_lines(row: sqlite3.Row) -> list[Line]:
    return [tuple(x) for x in json.loads(row["document"])["lines"]]
