"""The sale contract: what a POS sends (spool file or local API) and what it gets back.

Money and quantities are decimal *strings* ("12.50", "-1", "0.250"); JSON numbers are
refused so no float ever touches an amount. Every rejection is an :class:`InvalidSale`
naming the field and the rule, raised before any number is allocated.
"""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from agent.errors import InvalidSale

__all__ = [
    "VAT_CLASSES",
    "Line",
    "Payment",
    "ReceiptResult",
    "Sale",
    "line_total_cents",
    "parse_sale",
]

VAT_CLASSES = ("normal", "reduced1", "reduced2", "zero", "special")
MAX_CENTS = 10**11  # one billion euros per line or receipt: far beyond any till

Money = Annotated[str, StringConstraints(pattern=r"^-?\d{1,10}(\.\d{1,2})?$")]
Quantity = Annotated[str, StringConstraints(pattern=r"^-?\d{1,7}(\.\d{1,3})?$")]
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
Text = Annotated[str, StringConstraints(min_length=1, max_length=80, pattern=_PRINTABLE)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.:-]+$")]
RequestId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]


class Line(BaseModel):
    """One sold item: gross unit price, quantity and VAT class."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    text: Text
    qty: Quantity
    unit_price: Money
    vat: Literal["normal", "reduced1", "reduced2", "zero", "special"]


class Payment(BaseModel):
    """One payment (cash, card, voucher ...), gross."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    method: Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z0-9_-]+$")]
    amount: Money


class Sale(BaseModel):
    """A sale as the POS sends it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_by_name=False)

    request_id: RequestId
    register_id: Id = Field(alias="register")
    kind: Literal["standard", "storno", "training", "null"]
    voids: Annotated[int, Field(ge=1)] | None = None
    cashier: Text | None = None
    lines: Annotated[list[Line], Field(max_length=500)] = []
    payments: Annotated[list[Payment], Field(max_length=20)] = []


class ReceiptResult(BaseModel):
    """What the POS gets back: everything needed to print the receipt."""

    model_config = ConfigDict(frozen=True, serialize_by_alias=True, validate_by_name=True)

    register_id: str = Field(alias="register")
    number: int
    receipt_id: str
    kind: str
    signature_state: Literal["signed", "fallback", "unsigned"]
    qr: str
    ocr: str
    jws: str
    issued_at: str
    lines: list[str]


_RULES = {
    "missing": "required",
    "extra_forbidden": "unknown-field",
    "string_type": "type-string",
    "int_type": "type-integer",
    "list_type": "type-list",
    "model_type": "type-object",
    "literal_error": "allowed-values",
    "string_pattern_mismatch": "format",
    "string_too_short": "min-length",
    "string_too_long": "max-length",
    "too_long": "max-items",
    "greater_than_equal": "minimum",
}

_HINTS = {
    "Money": 'money is a decimal string with at most 2 decimals, e.g. "12.50" (never a number)',
}


def _first_error(exc: ValidationError) -> InvalidSale:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(sale)"
    rule = _RULES.get(err["type"], err["type"].replace("_", "-"))
    message = err["msg"]
    if field.endswith(("unit_price", "amount")):
        message = f"{message}; {_HINTS['Money']}"
    if field.endswith("qty"):
        message = f'{message}; a quantity is a decimal string with at most 3 decimals, e.g. "2"'
    if field == "register" and rule == "format":
        message = f"{message}; a Kassen-ID uses letters, digits, '.', ':' and '-' (no '_')"
    return InvalidSale(field, rule, message)


def parse_sale(raw: bytes | str | dict[str, Any]) -> Sale:
    """Parse and check a sale from JSON text or a decoded object.

    Raises:
        InvalidSale: malformed JSON, a schema violation or a broken business rule.
    """
    if isinstance(raw, (bytes, str)):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidSale("(document)", "json", f"not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidSale("(document)", "type-object", "a sale is a JSON object")
    try:
        sale = Sale.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc) from None
    _check_rules(sale)
    return sale


def line_total_cents(line: Line) -> int:
    """Gross total of a line in cents, rounded half up."""
    total = Decimal(line.qty) * Decimal(line.unit_price) * 100
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _cents(money: str) -> int:
    return int(Decimal(money) * 100)


def _check_rules(sale: Sale) -> None:
    if sale.kind == "storno":
        _check_storno(sale)
    elif sale.kind == "null":
        _check_null(sale)
    else:
        _check_sale_lines(sale)


def _check_sale_lines(sale: Sale) -> None:
    if sale.voids is not None:
        raise InvalidSale("voids", "storno-only", "only a storno may name a receipt in voids")
    if not sale.lines:
        raise InvalidSale("lines", "min-items", f"a {sale.kind} sale needs at least one line")
    for i, line in enumerate(sale.lines):
        if Decimal(line.qty) == 0:
            raise InvalidSale(f"lines.{i}.qty", "non-zero", "a line quantity must not be zero")
        if abs(line_total_cents(line)) > MAX_CENTS:
            raise InvalidSale(f"lines.{i}", "max-amount", "the line total is out of range")
    if not sale.payments:
        raise InvalidSale("payments", "min-items", "a sale needs at least one payment")
    total = sum(line_total_cents(line) for line in sale.lines)
    paid = sum(_cents(p.amount) for p in sale.payments)
    if total != paid:
        raise InvalidSale(
            "payments",
            "sum-matches-lines",
            f"payments add up to {paid / 100:.2f} but the lines to {total / 100:.2f}",
        )


def _check_storno(sale: Sale) -> None:
    if sale.voids is None:
        raise InvalidSale("voids", "required", "a storno names the number of the voided receipt")
    if sale.lines:
        raise InvalidSale(
            "lines", "storno-no-lines", "a storno voids the whole receipt in voids: send no lines"
        )


def _check_null(sale: Sale) -> None:
    if sale.voids is not None:
        raise InvalidSale("voids", "storno-only", "only a storno may name a receipt in voids")
    if sale.lines or sale.payments:
        raise InvalidSale("lines", "null-empty", "a Nullbeleg carries no lines and no payments")
