"""The receipt service: turns sales into signed, chained, durably journaled receipts.

The durable order (DESIGN.md invariant 1) is the shape of :meth:`ReceiptService._issue`:
validate -> ``BEGIN IMMEDIATE`` -> allocate the number -> sign (or fallback) -> insert
receipt and journal event, update the register -> ``COMMIT`` (WAL, synchronous=FULL) ->
return. Nothing is returned, printed or acknowledged before the commit; a crash before it
leaves no trace, because the number is allocated inside the transaction.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Row, func, select

from agent.at_rksv import (
    FALLBACK_SIGNATURE,
    STORNO_MARKER,
    TRAINING_MARKER,
    Payload,
    cents_to_amount,
    chain_value,
    encrypt_counter,
    jws_compact,
    ocr_code,
    qr_code,
    signing_input,
    split_jws,
)
from agent.clock import Clock, SystemClock
from agent.contract import ReceiptResult, Sale, line_total_cents, parse_sale
from agent.errors import FiscalError, InvalidSale, NotFound, SigningError
from agent.receipt_text import TextFacts, render_lines
from agent.signing import SignatureUnit, sign_verified
from agent.signing.registry import UnitRegistry
from storage.db import TillDB
from storage.journal import append_event, canonical_json
from storage.models import RECEIPTS, REGISTER_UNITS, REGISTERS, UNITS

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
_R, _REG, _RU, _U = RECEIPTS, REGISTERS, REGISTER_UNITS, UNITS
_VATS = ("normal", "reduced1", "reduced2", "zero", "special")
Amounts = tuple[int, int, int, int, int]
ZERO: Amounts = (0, 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class RegisterSetup:
    """What `init` needs to know about a new register."""

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
    voids: Row[Any] | None = None
    lines: tuple[tuple[str, str, str, str, int], ...] = ()
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
        self._lock = threading.RLock()

    # -- public API -------------------------------------------------------------------

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
        _check_id("register", setup.register_id)
        _check_id("receipt_id_format", setup.receipt_id_format.format(number=1))
        if len(setup.aes_key) != 32:
            raise InvalidSale("aes_key", "aes-256", "the AES key must be 32 bytes")
        with self._lock, self.db.writer.begin() as conn:
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
        with self._lock, self.db.writer.begin() as conn:
            stored = self._by_request(conn, sale.register_id, sale.request_id)
            if stored is not None:
                if stored.sale_hash != sale_hash:
                    raise InvalidSale(
                        "request_id",
                        "request-id-reused",
                        "this request_id was used for a different sale",
                    )
                return _result(stored)
            reg = self._open_register(conn, sale.register_id)
            draft = self._draft_for_sale(conn, reg, sale, sale_hash)
            return self._issue_in(conn, reg, draft)

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

        ``amounts`` and ``kind`` standard/storno/training are accepted for scenario replay.
        """
        if kind not in KINDS or kind == "start":
            raise InvalidSale("kind", "allowed-values", f"cannot issue a {kind!r} receipt here")
        with self._lock, self.db.writer.begin() as conn:
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
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(_R).where(_R.c.register_id == register_id, _R.c.number == number)
            ).first()
        if row is None:
            raise NotFound(f"register {register_id} has no receipt {number}")
        return _result(row)

    def recent(self, register_id: str, *, limit: int = 50, offset: int = 0) -> list[ReceiptResult]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(_R)
                .where(_R.c.register_id == register_id)
                .order_by(_R.c.number.desc())
                .limit(limit)
                .offset(offset)
            ).all()
        return [_result(r) for r in rows]

    # -- registers ---------------------------------------------------------------------

    def _create_register(self, conn: Connection, setup: RegisterSetup) -> None:
        if conn.execute(select(_REG.c.id).where(_REG.c.id == setup.register_id)).first():
            raise InvalidSale(
                "register",
                "register-exists",
                f"register {setup.register_id} is already initialized",
            )
        zdas = self._unit_zdas(conn, setup.unit_ids)
        closed = zdas[0] == "AT0"
        if any((z == "AT0") != closed for z in zdas):
            raise InvalidSale("units", "one-system", "do not mix closed (AT0) and open units")
        now = self.clock.now().isoformat()
        conn.execute(
            _REG.insert(),
            {
                "id": setup.register_id,
                "closed_system": closed,
                "counter_bytes": setup.counter_bytes,
                "aes_key": base64.b64encode(setup.aes_key).decode(),
                "timezone": setup.timezone,
                "receipt_id_format": setup.receipt_id_format,
                "state": "active",
                "active_unit": setup.unit_ids[0],
                "last_number": 0,
                "turnover_cents": 0,
                "last_jws": None,
                "last_issued_at": None,
                "created_at": now,
            },
        )
        conn.execute(
            _RU.insert(),
            [
                {"register_id": setup.register_id, "position": i, "unit_id": u}
                for i, u in enumerate(setup.unit_ids)
            ],
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

    def _unit_zdas(self, conn: Connection, unit_ids: Sequence[str]) -> list[str]:
        if not unit_ids:
            raise InvalidSale("units", "min-items", "a register needs at least one unit")
        zdas = []
        for unit_id in unit_ids:
            row = conn.execute(select(_U.c.zda).where(_U.c.id == unit_id)).first()
            if row is None:
                raise InvalidSale("units", "unit-unknown", f"no signature unit {unit_id!r}")
            zdas.append(str(row[0]))
        return zdas

    def _register_row(self, conn: Connection, register_id: str) -> Row[Any]:
        row = conn.execute(select(_REG).where(_REG.c.id == register_id)).first()
        if row is None:
            raise InvalidSale(
                "register",
                "register-unknown",
                f"register {register_id!r} is not initialized on this till",
            )
        return row

    def _open_register(self, conn: Connection, register_id: str) -> Row[Any]:
        reg = self._register_row(conn, register_id)
        if reg.state != "active":
            raise InvalidSale(
                "register",
                "register-closed",
                f"register {register_id} was closed by its Schlussbeleg",
            )
        return reg

    # -- sales -------------------------------------------------------------------------

    def _by_request(self, conn: Connection, register_id: str, request_id: str) -> Row[Any] | None:
        return conn.execute(
            select(_R).where(_R.c.register_id == register_id, _R.c.request_id == request_id)
        ).first()

    def _draft_for_sale(
        self, conn: Connection, reg: Row[Any], sale: Sale, sale_hash: str
    ) -> _Draft:
        payments = tuple((p.method, _to_cents(p.amount)) for p in sale.payments)
        if sale.kind == "storno":
            voided = self._voidable(conn, reg.id, sale.voids)
            amounts = _negate(_row_amounts(voided))
            lines = tuple((t, q, p, v, -c) for t, q, p, v, c in _stored_lines(voided))
            if payments and sum(a for _, a in payments) != sum(amounts):
                raise InvalidSale(
                    "payments",
                    "sum-matches-lines",
                    "storno payments must add up to minus the voided total",
                )
            return _Draft(
                reg.id,
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
            reg.id,
            sale.kind,
            _sum_by_vat(lines),
            sale.request_id,
            sale_hash,
            None,
            lines,
            payments,
            sale.cashier,
        )

    def _voidable(self, conn: Connection, register_id: str, number: int | None) -> Row[Any]:
        row = conn.execute(
            select(_R).where(_R.c.register_id == register_id, _R.c.number == number)
        ).first()
        if row is None:
            raise InvalidSale(
                "voids", "voids-unknown", f"register {register_id} has no receipt number {number}"
            )
        if row.kind != "standard":
            raise InvalidSale("voids", "voids-kind", f"a {row.kind} receipt cannot be voided")
        already = conn.execute(
            select(func.count()).where(_R.c.register_id == register_id, _R.c.voids_number == number)
        ).scalar_one()
        if already:
            raise InvalidSale("voids", "already-voided", f"receipt {number} is already voided")
        return row

    # -- the durable path ------------------------------------------------------------------

    def _issue_in(self, conn: Connection, reg: Row[Any], draft: _Draft) -> ReceiptResult:
        number = reg.last_number + 1
        receipt_id = draft.receipt_id or reg.receipt_id_format.format(number=number)
        _check_id("receipt_id", receipt_id)
        unit = self._unit_for(conn, reg, draft.unit_position)
        turnover = reg.turnover_cents + (
            sum(draft.amounts) if draft.kind in ("standard", "storno") else 0
        )
        payload = Payload(
            unit.identity.suite,
            reg.id,
            receipt_id,
            self._issued_at(reg, draft),
            tuple(cents_to_amount(a) for a in draft.amounts),  # type: ignore[arg-type]
            self._counter_field(reg, draft.kind, receipt_id, turnover),
            unit.identity.serial,
            chain_value(reg.last_jws, reg.id),
        )
        signature, state = self._sign(unit, payload, draft.kind)
        jws = jws_compact(payload, signature)
        document = self._document(reg, draft, payload, state)
        record = {
            "register_id": reg.id,
            "number": number,
            "receipt_id": receipt_id,
            "kind": draft.kind,
            "request_id": draft.request_id,
            "sale_hash": draft.sale_hash,
            "issued_at": payload.issued_at,
            "turnover_cents": turnover,
            "jws": jws,
            "signature_state": state,
            "unit_id": unit.identity.unit_id,
            "voids_number": None if draft.voids is None else draft.voids.number,
            "document": canonical_json(document),
            **dict(zip(_AMOUNT_COLUMNS, draft.amounts, strict=True)),
        }
        now = self.clock.now().isoformat()
        seq = append_event(
            conn,
            kind="receipt.issued",
            register_id=reg.id,
            at=now,
            data={k: v for k, v in record.items() if k != "document"} | {"document": document},
        )
        conn.execute(_R.insert(), record | {"journal_seq": seq})
        conn.execute(
            _REG.update()
            .where(_REG.c.id == reg.id)
            .values(
                last_number=number,
                turnover_cents=turnover,
                last_jws=jws,
                last_issued_at=payload.issued_at,
                state="closed" if draft.kind == "closing" else "active",
            )
        )
        return _result_from(reg.id, number, receipt_id, draft.kind, state, jws, document)

    def _unit_for(self, conn: Connection, reg: Row[Any], position: int | None) -> SignatureUnit:
        unit_id = reg.active_unit
        if position is not None:
            row = conn.execute(
                select(_RU.c.unit_id).where(_RU.c.register_id == reg.id, _RU.c.position == position)
            ).first()
            if row is None:
                raise InvalidSale(
                    "unit_position",
                    "unit-unknown",
                    f"register {reg.id} has no unit at position {position}",
                )
            unit_id = row[0]
        return self.units.get(conn, unit_id)

    def _issued_at(self, reg: Row[Any], draft: _Draft) -> str:
        if draft.issued_at is not None:
            stamp = draft.issued_at
        else:
            local = self.clock.now().astimezone(ZoneInfo(reg.timezone))
            stamp = local.strftime("%Y-%m-%dT%H:%M:%S")
        # dates never go back within a register (a clock set back must not reorder the DEP)
        if reg.last_issued_at is not None and stamp < reg.last_issued_at:
            stamp = reg.last_issued_at
        return stamp

    def _counter_field(self, reg: Row[Any], kind: str, receipt_id: str, turnover: int) -> str:
        if kind == "storno":
            return STORNO_MARKER
        if kind == "training":
            return TRAINING_MARKER
        key = base64.b64decode(reg.aes_key)
        return encrypt_counter(key, reg.id, receipt_id, turnover, reg.counter_bytes)

    def _sign(self, unit: SignatureUnit, payload: Payload, kind: str) -> tuple[bytes, str]:
        try:
            return sign_verified(unit, signing_input(payload), timeout=self.sign_timeout), "signed"
        except SigningError as exc:
            if kind in MUST_SIGN:
                raise FiscalError(
                    f"a {kind} receipt must be validly signed and the unit failed: {exc}"
                ) from exc
            return FALLBACK_SIGNATURE, "fallback"

    def _document(
        self, reg: Row[Any], draft: _Draft, payload: Payload, state: str
    ) -> dict[str, Any]:
        facts = TextFacts(
            reg.id,
            payload.receipt_id,
            draft.kind,
            payload.issued_at,
            state,
            sum(draft.amounts),
            draft.lines,
            draft.payments,
            draft.cashier,
            None if draft.voids is None else draft.voids.receipt_id,
        )
        return {
            "lines": [list(ln) for ln in draft.lines],
            "payments": [list(p) for p in draft.payments],
            "cashier": draft.cashier,
            "text": render_lines(facts),
        }


_AMOUNT_COLUMNS = (
    "amount_normal",
    "amount_reduced1",
    "amount_reduced2",
    "amount_zero",
    "amount_special",
)


def _check_id(field_name: str, value: str) -> None:
    if not value or "_" in value or len(value) > 64 or not value.isprintable():
        raise InvalidSale(
            field_name, "id-format", f"{value!r} must be 1-64 printable characters without '_'"
        )


def _to_cents(money: str) -> int:
    whole, _, frac = money.lstrip("-").partition(".")
    cents = int(whole) * 100 + int((frac + "00")[:2])
    return -cents if money.startswith("-") else cents


def _sum_by_vat(lines: Sequence[tuple[str, str, str, str, int]]) -> Amounts:
    sums = dict.fromkeys(_VATS, 0)
    for *_, vat, total in lines:
        sums[vat] += total
    return tuple(sums[v] for v in _VATS)  # type: ignore[return-value]


def _negate(amounts: Amounts) -> Amounts:
    return tuple(-a for a in amounts)  # type: ignore[return-value]


def _row_amounts(row: Row[Any]) -> Amounts:
    return tuple(getattr(row, c) for c in _AMOUNT_COLUMNS)


def _stored_lines(row: Row[Any]) -> list[tuple[str, str, str, str, int]]:
    return [tuple(x) for x in json.loads(row.document)["lines"]]


def _result_from(  # noqa: PLR0917 - the stored facts of one receipt
    register_id: str,
    number: int,
    receipt_id: str,
    kind: str,
    state: str,
    jws: str,
    document: dict[str, Any],
) -> ReceiptResult:
    payload, signature, _ = split_jws(jws)
    return ReceiptResult(
        register_id=register_id,
        number=number,
        receipt_id=receipt_id,
        kind=kind,
        signature_state=state,
        qr=qr_code(payload, signature),
        ocr=ocr_code(payload, signature),
        jws=jws,
        issued_at=payload.issued_at,
        lines=document["text"],
    )


def _result(row: Row[Any]) -> ReceiptResult:
    return _result_from(
        row.register_id,
        row.number,
        row.receipt_id,
        row.kind,
        row.signature_state,
        row.jws,
        json.loads(row.document),
    )
