"""The sale contract: what a POS sends (spool file or local API) and what it gets back.

Money and quantities are decimal *strings* ("12.50", "-1", "0.250"); JSON numbers are
refused so no float ever touches an amount. Every rejection is an :class:`InvalidSale`
naming the field and the rule, raised before any number is allocated.
"""

from __future__ import annotations

import base64
import hashlib
import json
import unicodedata
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from agent.errors import InvalidSale
from storage.canonical import DuplicateKey, canonical_json, unique_keys

__all__ = [
    "REFERENCE_MAX_LENGTH",
    "VAT_CLASSES",
    "Line",
    "Payment",
    "ReceiptResult",
    "Sale",
    "check_reference",
    "line_total_cents",
    "load_json",
    "parse_sale",
    "refusal",
    "rule_name",
    "sale_fingerprint",
    "same_sale",
    "scaled",
]

VAT_CLASSES = ("normal", "reduced1", "reduced2", "zero", "special")
MAX_CENTS = 10**11  # one billion euros per line, payment or receipt: far beyond any till
_MAX_EUROS = f"{MAX_CENTS // 100:,}"

# [0-9], not \d: the pattern engine's \d also matches other scripts' digits (fullwidth ...)
Money = Annotated[str, StringConstraints(pattern=r"^-?[0-9]{1,10}(\.[0-9]{1,2})?$")]
Quantity = Annotated[str, StringConstraints(pattern=r"^-?[0-9]{1,7}(\.[0-9]{1,3})?$")]
REFERENCE_MAX_LENGTH = 200  # an operator's FinanzOnline or Belegcheck reference
_PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]+$"  # no C0, DEL or C1 control characters
# characters by Unicode category that would make a printed text differ from what it seems
_HIDDEN = {
    "Cf": "an invisible format character (it can reorder or hide text without being seen)",
    "Cn": "an unassigned code point, not a character",
    "Co": "a private-use character (no agreed meaning or glyph)",
    "Cs": "half of a surrogate pair, not a character",
    "Zl": "a line break",
    "Zp": "a paragraph break",
}


def _hidden_character(text: str) -> str | None:
    """Why ``text`` is refused for its first :data:`_HIDDEN` character; None if it has none."""
    if text.isascii():  # the pattern has refused ASCII's control characters already
        return None
    for char in text:
        reason = _HIDDEN.get(unicodedata.category(char))
        if reason is not None:
            name = unicodedata.name(char, "")
            named = f"U+{ord(char):04X} ({name})" if name else f"U+{ord(char):04X}"
            return f"the character {named} is not allowed: {reason}"
    return None


# letters and symbols that print as nothing: the Hangul fillers and the blank braille pattern
_BLANK_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# spaces of any width, and marks (accents) that print on a character before them
_BLANK_CATEGORIES = frozenset({"Zs", "Mn", "Me"})


def _blank(text: str) -> bool:
    """True when no character of ``text`` prints as something: it has only spaces, marks
    with no character to sit on, or fillers (it may also be empty)."""
    if text.isascii():  # the pattern has refused ASCII's control characters already
        return not text.strip(" ")
    return all(unicodedata.category(c) in _BLANK_CATEGORIES or c in _BLANK_CHARACTERS for c in text)


def check_reference(reference: str, what: str) -> None:
    """Refuse an operator's reference (``what``: whose, e.g. "FinanzOnline") unless it is
    1-200 printable characters, one of them visible. It is evidence, journaled for good
    and shown in log lines and tables, where a newline or an escape sequence would forge
    or hide text; the same rule holds whether it comes through the local API or the
    command line.

    Raises:
        InvalidSale: field ``reference``, rule ``required``, ``max-length`` or ``format``.
    """
    if not reference.strip() or _blank(reference):
        raise InvalidSale("reference", "required", f"give the {what} reference")
    if len(reference) > REFERENCE_MAX_LENGTH:
        raise InvalidSale(
            "reference",
            "max-length",
            f"a reference is at most {REFERENCE_MAX_LENGTH} characters, not {len(reference)}",
        )
    control = next((c for c in reference if unicodedata.category(c) == "Cc"), None)
    problem = _hidden_character(reference)
    if control is not None:
        problem = f"the control character U+{ord(control):04X} is not allowed"
    if problem is not None:
        raise InvalidSale("reference", "format", f"{problem} in a reference")


def _visible(text: str) -> str:
    if text.isascii() and text.strip(" "):  # the usual text: nothing to look for further
        return text
    problem = _hidden_character(text)
    if problem is not None:
        raise PydanticCustomError("hidden_character", "{problem}", {"problem": problem})
    if _blank(text):
        raise PydanticCustomError(
            "blank_text", "the text has no visible character (it would print as nothing)"
        )
    return text


Text = Annotated[
    str,
    StringConstraints(min_length=1, max_length=80, pattern=_PRINTABLE),
    AfterValidator(_visible),
]
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
    voids: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = None
    cashier: Text | None = None
    lines: Annotated[list[Line], Field(max_length=500)] = []
    payments: Annotated[list[Payment], Field(max_length=20)] = []


class ReceiptResult(BaseModel):
    """What the POS gets back: everything needed to print the receipt."""

    model_config = ConfigDict(
        frozen=True,
        serialize_by_alias=True,
        validate_by_name=True,
        json_schema_serialization_defaults_required=True,  # every field is always sent
    )

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
    # an unsigned receipt once remedied (agent.receipt_view.Resolution); else null
    resolution: Literal["adopted", "superseded", "kept"] | None = Field(
        None, description="how an unsigned receipt was remedied; null for any other receipt"
    )
    replaced_by: int | None = Field(
        None, description="the number of the receipt that replaces it (superseded), else null"
    )
    voided_by: int | None = Field(
        None, description="the number of the Storno that voids it (superseded), else null"
    )


# every error type the Sale model can raise, as the project's rule name (pydantic's own
# names never reach the POS; tests/agent/test_contract.py walks the model to check this)
_RULES = {
    "missing": "required",
    "extra_forbidden": "unknown-field",
    "string_type": "type-string",
    "string_unicode": "format",  # a lone surrogate ("\ud800" in the JSON)
    "hidden_character": "format",  # Text: invisible, unassigned or private-use characters
    "blank_text": "blank",  # Text: only spaces, lone accents or fillers
    "int_type": "type-integer",
    "list_type": "type-list",
    "model_type": "type-object",
    "literal_error": "allowed-values",
    "string_pattern_mismatch": "format",
    "string_too_short": "min-length",
    "string_too_long": "max-length",
    "too_long": "max-items",
    "greater_than_equal": "minimum",
    "less_than_equal": "maximum",
}

# the other requests of the local API (an outage report, a path parameter) may also raise
_OTHER_RULES = {
    "json_invalid": "json",
    "int_parsing": "type-integer",
    "bool_type": "type-boolean",
    "bool_parsing": "type-boolean",
}


def rule_name(error_type: str) -> str:
    """The project's rule name for a pydantic error type: what a sale's errors say, for
    every request (pydantic's own names never reach a client)."""
    return _RULES.get(error_type) or _OTHER_RULES.get(error_type, "invalid")


_MONEY = (
    "money is a decimal string with at most 2 decimals and 10 digits before the point,"
    ' e.g. "12.50" (never a number)'
)
_TEXT = (
    "a text is 1-80 printable characters, at least one of them visible (no control"
    " characters such as tab or newline, no invisible or unassigned ones)"
)
_HINTS = {  # by the last part of the field path
    "unit_price": _MONEY,
    "amount": _MONEY,
    "qty": "a quantity is a decimal string with at most 3 decimals and 7 digits before the"
    ' point, e.g. "2" or "0.250"',
    "text": _TEXT,
    "cashier": _TEXT,
    "register": "a Kassen-ID is 1-64 letters, digits, '.', ':' or '-' (no '_')",
    "request_id": "a request_id is 1-128 letters, digits, '.', '_', ':' or '-', "
    "starting with a letter or digit",
    "method": 'a payment method is 1-32 lowercase letters, digits, "_" or "-", e.g. "cash"',
    "voids": "voids is the number of the voided receipt as a JSON integer, e.g. 2",
}


def refusal(error: Mapping[str, Any], what: str = "the sale") -> InvalidSale:
    """The :class:`InvalidSale` for one pydantic error (``loc``, ``type``, ``msg``,
    ``input``) of ``what``: the project's rule and a sentence that helps, as a sale gets
    them; every request of the local API explains its fields in these words."""
    loc = [str(p) for p in error["loc"]]
    field = ".".join(loc) or "(sale)"
    rule = rule_name(error["type"])  # "invalid": a constraint added but not mapped
    if rule == "unknown-field":
        return InvalidSale(field, rule, f"unknown field {loc[-1]!r}: {what} has no such field")
    if rule == "required":
        message = f"the field {field!r} is required"
    elif error["type"] == "string_pattern_mismatch":
        message = "the value does not have the required form"  # the regex helps nobody
    elif error["type"] == "string_unicode" and isinstance(error.get("input"), str):
        message = _hidden_character(error["input"]) or error["msg"]
    elif rule == "allowed-values":
        message = f"{_as_json(error.get('input'))} is not allowed: {_allowed(error)}"
    elif error["type"] == "too_long" and loc:
        ctx = error.get("ctx") or {}
        most, sent = ctx.get("max_length"), ctx.get("actual_length")
        message = f"{what} carries at most {most} {loc[-1]}, not {sent}"
    else:
        message = error["msg"]
    hint = _HINTS.get(loc[-1]) if loc else None
    return InvalidSale(field, rule, f"{message}; {hint}" if hint else message)


def _as_json(value: Any) -> str:
    """A refused value as the client wrote it, in JSON (``null``, ``true``, ``"x"``), cut
    to 40 characters: never Python's spelling (``None``, ``True``). Beyond ASCII it is
    escaped (``"\\u202e"``): a bidi control or a line separator would hide or reorder the
    message on the POS's screen."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not from JSON (a caller's object): as Python has it
        text = repr(value)
    return text if len(text) <= 40 else text[:39] + "\u2026"


def _allowed(error: Mapping[str, Any]) -> str:
    """The values a literal takes, in JSON: 'use "null", "monthly" or "yearly"'."""
    expected = (error.get("ctx") or {}).get("expected")
    if not isinstance(expected, str):
        return str(error["msg"])
    return "use " + expected.replace("'", '"')


# one decoder for every call: json.loads with a hook builds a new one each time
_DECODER = json.JSONDecoder(object_pairs_hook=unique_keys)


def load_json(raw: bytes | str) -> Any:
    """JSON text as the agent reads every request body: a key named twice in one object
    is refused (json.loads would keep the last). Raises ``InvalidSale`` (``(document)``)."""
    try:
        if isinstance(raw, (bytes, bytearray)):  # decoded as json.loads decodes them
            return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
        if raw.startswith("\ufeff"):
            return json.loads(raw)  # raises json.loads' own error for a byte order mark
        return _DECODER.decode(raw)
    except DuplicateKey as exc:
        raise InvalidSale(
            "(document)", "duplicate-key", f"the key {exc.args[0]!r} appears twice in one object"
        ) from None
    except RecursionError:
        raise InvalidSale("(document)", "json", "not valid JSON: nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidSale("(document)", "json", f"not valid JSON: {exc}") from exc
    except ValueError as exc:  # int() refuses numbers of more than 4300 digits
        raise InvalidSale("(document)", "json", "not valid JSON: a number is too long") from exc


def parse_sale(raw: bytes | str | dict[str, Any]) -> Sale:
    """Parse and check a sale from JSON text or a decoded object.

    Raises:
        InvalidSale: malformed JSON, a schema violation or a broken business rule.
    """
    if isinstance(raw, (bytes, str)):
        raw = load_json(raw)
    if not isinstance(raw, dict):
        raise InvalidSale("(document)", "type-object", "a sale is a JSON object")
    try:
        sale = Sale.model_validate(raw)
    except ValidationError as exc:
        raise refusal(exc.errors()[0]) from None
    _check_rules(sale)
    return sale


def sale_fingerprint(sale: Sale) -> str:
    """What identifies a sale for idempotency: ``s3:`` + base64url SHA-256 of its fields.

    The fields are joined with ASCII separators that no checked field can contain (texts
    refuse control characters; every other field has a pattern without them), so two
    sales share a fingerprint only when every field is equal. Money counts as its amount
    in cents ("12.5", "12.50" and "0012.50" are one price); quantities and texts count as
    sent (the receipt prints them so). Receipts issued before this form carry an ``s2:``
    fingerprint (money as sent) or the hex SHA-256 of the sale's canonical JSON
    (:func:`same_sale` knows both).
    """
    return "s3:" + _digest(sale, _cents_text)


def _cents_text(money: str) -> str:
    """``money`` in one spelling per amount: ``"12.5"``, ``"0012.50"`` -> ``"12.50"``."""
    if len(money) > 3 and money[-3] == "." and money[0] in _NONZERO:  # the usual spelling
        return money
    cents = scaled(money, 2)
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"


_NONZERO = frozenset("123456789")


def _as_sent(money: str) -> str:
    return money


def _digest(sale: Sale, money: Callable[[str], str]) -> str:
    # lists, not generators: str.join makes a list of a generator first
    lines = "\x1e".join(
        [f"{x.text}\x1f{x.qty}\x1f{money(x.unit_price)}\x1f{x.vat}" for x in sale.lines]
    )
    payments = "\x1e".join([f"{p.method}\x1f{money(p.amount)}" for p in sale.payments])
    voids = "" if sale.voids is None else str(sale.voids)
    material = "\x1d".join(
        (sale.request_id, sale.register_id, sale.kind, voids, sale.cashier or "", lines, payments)
    )
    digest = hashlib.sha256(material.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest)[:43].decode("ascii")  # 43: the 32 bytes, no "="


def same_sale(stored: str | None, sale: Sale) -> bool:
    """True when ``sale`` is the sale whose stored fingerprint is ``stored`` (of any form
    a receipt was ever stored with: a retry after an upgrade still finds its receipt)."""
    if stored is None:
        return False
    if stored.startswith("s3:"):
        return stored == sale_fingerprint(sale)
    if stored.startswith("s2:"):  # money as sent: an earlier receipt's retry spells it so
        return stored == "s2:" + _digest(sale, _as_sent)
    legacy = canonical_json(sale.model_dump())  # the form of receipts issued before "s2:"
    return stored == hashlib.sha256(legacy.encode("utf-8")).hexdigest()


def line_total_cents(line: Line) -> int:
    """Gross total of a line in cents, rounded half up (a half cent away from zero).

    Exact integer arithmetic on the checked decimal strings: quantity in thousandths
    times price in cents gives thousandths of a cent.
    """
    return _rounded_cents(scaled(line.qty, 3) * scaled(line.unit_price, 2))


def _rounded_cents(thousandths: int) -> int:
    """Thousandths of a cent as cents, rounded half up (a half cent away from zero)."""
    cents = (abs(thousandths) + 500) // 1000
    return -cents if thousandths < 0 else cents


def scaled(number: str, places: int) -> int:
    """A checked decimal string (``-?digits(.digits)?``, at most ``places`` decimals) as
    an integer count of ``10**-places`` units: ``scaled("2.1", 2) == 210``."""
    point = number.find(".")
    if point < 0:
        return int(number) * _POW10[places]
    decimals = len(number) - point - 1
    if decimals > places:
        raise ValueError(f"{number!r} has more than {places} decimals")
    # the digits without the point, sign included: one int() call ("-0.5" -> -5)
    return int(number[:point] + number[point + 1 :]) * _POW10[places - decimals]


_POW10 = (1, 10, 100, 1000)


def _check_rules(sale: Sale) -> None:
    """The rules across fields; the lines come before the payments, so a line over the
    limit is named even when a payment matches it (and is over the limit too)."""
    if sale.kind == "storno":
        _check_storno(sale)
        _payment_cents(sale)
    elif sale.kind == "null":
        _check_null(sale)
    else:
        total = _check_sale_lines(sale)
        _check_paid(_payment_cents(sale), total)


def _payment_cents(sale: Sale) -> list[int]:
    """The amounts of the payments in cents, each checked against the limit."""
    amounts = [scaled(p.amount, 2) for p in sale.payments]
    for i, cents in enumerate(amounts):
        if abs(cents) > MAX_CENTS:
            raise InvalidSale(
                f"payments.{i}.amount", "max-amount", f"a payment is at most {_MAX_EUROS} euros"
            )
    return amounts


def _check_sale_lines(sale: Sale) -> int:
    """The lines of a standard or training sale; their total in cents."""
    if sale.voids is not None:
        raise InvalidSale("voids", "storno-only", "only a storno may name a receipt in voids")
    if not sale.lines:
        raise InvalidSale("lines", "min-items", f"a {sale.kind} sale needs at least one line")
    total = 0
    for i, line in enumerate(sale.lines):
        qty = scaled(line.qty, 3)  # once for both rules (line_total_cents would scale it again)
        if qty == 0:
            raise InvalidSale(f"lines.{i}.qty", "non-zero", "a line quantity must not be zero")
        cents = _rounded_cents(qty * scaled(line.unit_price, 2))
        if abs(cents) > MAX_CENTS:
            raise InvalidSale(
                f"lines.{i}", "max-amount", f"a line total is at most {_MAX_EUROS} euros"
            )
        total += cents
    if abs(total) > MAX_CENTS:
        raise InvalidSale("lines", "max-amount", f"a receipt total is at most {_MAX_EUROS} euros")
    if not sale.payments:
        raise InvalidSale("payments", "min-items", "a sale needs at least one payment")
    return total


def _check_paid(amounts: list[int], total: int) -> None:
    paid = sum(amounts)
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
    for name in ("lines", "payments"):
        if getattr(sale, name):
            raise InvalidSale(
                name, "null-empty", f"a Nullbeleg carries no lines and no payments: send no {name}"
            )
