"""Invariant 8: bad input costs nothing.

Every bad sale is refused with an :class:`InvalidSale` naming the field and the rule, with
a message that says what is wrong; it consumes no number, changes no counter and appends
nothing to the journal, and the next valid sale gets the next number.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from agent.errors import InvalidSale
from agent.receipts import ReceiptService
from agent.signing import UnitConfig, open_unit
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import sale

Query = Callable[..., list[sqlite3.Row]]
REGISTER = "KASSE-1"


def _line(**overrides: str) -> dict[str, str]:
    return {"text": "Schnitzel", "qty": "1", "unit_price": "12.50", "vat": "normal"} | overrides


def _one_line(payment: str = "12.50", **overrides: Any) -> dict[str, Any]:
    """A sale of one line (overridden as given) paid with ``payment``."""
    return sale(lines=[_line(**overrides)], payments=[{"method": "cash", "amount": payment}])


def _without(key: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = dict(sale() if base is None else base)
    del doc[key]
    return doc


def _storno(**extra: Any) -> dict[str, Any]:
    return {"request_id": "sto-new", "register": REGISTER, "kind": "storno"} | extra


def _null(**extra: Any) -> dict[str, Any]:
    return {"request_id": "null-new", "register": REGISTER, "kind": "null"} | extra


@dataclass(frozen=True)
class Bad:
    """One bad sale: what is sent and what the refusal must say."""

    id: str
    raw: dict[str, Any] | list[Any] | bytes | str
    field: str
    rule: str
    mentions: str  # a fragment the message must contain (case-insensitive)
    closes: bool = False  # the register is closed (Schlussbeleg) before the attempt

    def body(self) -> bytes | str:
        """What the POS sends: JSON bytes (dicts and lists are encoded here)."""
        if isinstance(self.raw, (dict, list)):
            return json.dumps(self.raw).encode()
        return self.raw


BAD_SALES = [
    # -- amounts ---------------------------------------------------------------------------
    Bad(
        "sums-disagree",
        sale(payments=[{"method": "cash", "amount": "16.00"}]),
        "payments",
        "sum-matches-lines",
        "16.70",
    ),
    Bad(
        "float-money",
        _one_line(unit_price=1.5),
        "lines.0.unit_price",
        "type-string",
        "never a number",
    ),
    Bad(
        "integer-money",
        sale(payments=[{"method": "cash", "amount": 16}]),
        "payments.0.amount",
        "type-string",
        "never a number",
    ),
    Bad(
        "nan-money",
        json.dumps(_one_line()).replace('"unit_price": "12.50"', '"unit_price": NaN'),
        "lines.0.unit_price",
        "type-string",
        "decimal string",
    ),
    Bad(
        "float-qty",
        _one_line(qty=2.0),
        "lines.0.qty",
        "type-string",
        "quantity",
    ),
    Bad(
        "money-3-decimals", _one_line(unit_price="12.500"), "lines.0.unit_price", "format", "2 dec"
    ),
    Bad("money-comma", _one_line(unit_price="12,50"), "lines.0.unit_price", "format", '"12.50"'),
    Bad("money-exponent", _one_line(unit_price="1e3"), "lines.0.unit_price", "format", "decimal"),
    Bad("money-plus", _one_line(unit_price="+12.50"), "lines.0.unit_price", "format", "decimal"),
    Bad(
        "money-fullwidth-digits",
        _one_line(unit_price="\uff11\uff12.50"),
        "lines.0.unit_price",
        "format",
        "decimal string",
    ),
    Bad("qty-arabic-indic-digit", _one_line(qty="\u0661"), "lines.0.qty", "format", "quantity"),
    Bad("qty-4-decimals", _one_line(qty="1.0000"), "lines.0.qty", "format", "3 decimals"),
    Bad("zero-qty", _one_line(qty="0"), "lines.0.qty", "non-zero", "zero"),
    Bad("negative-zero-qty", _one_line(qty="-0.000"), "lines.0.qty", "non-zero", "zero"),
    Bad(
        "line-too-large",
        _one_line(qty="9999999", unit_price="9999999999.99"),
        "lines.0",
        "max-amount",
        "line total",
    ),
    Bad(
        "line-too-large-paid-exactly",
        _one_line(payment="1000000010.00", qty="1000", unit_price="1000000.01"),
        "lines.0",
        "max-amount",
        "line total",
    ),
    Bad(
        "receipt-too-large",
        sale(
            lines=[_line(unit_price="999999999.99")] * 2,
            payments=[{"method": "card", "amount": "999999999.99"}] * 2,
        ),
        "lines",
        "max-amount",
        "receipt total",
    ),
    Bad(
        "payment-too-large",
        _one_line(
            payment="9999999999.99",
        )
        | {
            "payments": [
                {"method": "cash", "amount": "9999999999.99"},
                {"method": "cash", "amount": "-9999999987.49"},
            ]
        },
        "payments.0.amount",
        "max-amount",
        "payment",
    ),
    # -- texts and ids ------------------------------------------------------------------------
    Bad("unknown-vat", _one_line(vat="luxury"), "lines.0.vat", "allowed-values", "luxury"),
    Bad("text-81-chars", _one_line(text="x" * 81), "lines.0.text", "max-length", "80"),
    Bad("text-empty", _one_line(text=""), "lines.0.text", "min-length", "80 printable"),
    Bad(
        "text-newline", _one_line(text="Schnitzel\nWiener Art"), "lines.0.text", "format", "control"
    ),
    Bad("text-escape", _one_line(text="Bier\x1b@"), "lines.0.text", "format", "control"),
    Bad("text-c1-control", _one_line(text="Bier\x9b2J"), "lines.0.text", "format", "control"),
    Bad("cashier-tab", sale(cashier="Anna\tB"), "cashier", "format", "control"),
    Bad(
        "text-right-to-left-override",
        _one_line(text="Bier \u202e05,0"),
        "lines.0.text",
        "format",
        "U+202E (RIGHT-TO-LEFT OVERRIDE) is not allowed",
    ),
    Bad(
        "cashier-zero-width-space",
        sale(cashier="An\u200bna"),
        "cashier",
        "format",
        "U+200B (ZERO WIDTH SPACE) is not allowed",
    ),
    Bad("text-private-use", _one_line(text="Bier \ue000"), "lines.0.text", "format", "U+E000"),
    Bad("text-unassigned", _one_line(text="Bier \u0378"), "lines.0.text", "format", "U+0378"),
    Bad("cashier-lone-surrogate", sale(cashier="Anna \ud800"), "cashier", "format", "U+D800"),
    Bad("text-space", _one_line(text=" "), "lines.0.text", "blank", "no visible character"),
    Bad(
        "text-wide-spaces",
        _one_line(text="\u3000\u00a0"),
        "lines.0.text",
        "blank",
        "no visible character",
    ),
    Bad("text-lone-accent", _one_line(text="\u0301"), "lines.0.text", "blank", "visible"),
    Bad("cashier-blank", sale(cashier="  "), "cashier", "blank", "no visible character"),
    Bad("register-underscore", sale(register="KASSE_1"), "register", "format", "'_'"),
    Bad("register-newline", sale(register="KASSE-1\n"), "register", "format", "Kassen-ID"),
    Bad("register-too-long", sale(register="K" * 65), "register", "max-length", "Kassen-ID"),
    Bad("unknown-register", sale(register="KASSE-9"), "register", "register-unknown", "KASSE-9"),
    Bad("missing-request-id", _without("request_id"), "request_id", "required", "request_id"),
    Bad("empty-request-id", sale(request_id=""), "request_id", "min-length", "request_id"),
    Bad("request-id-space", sale(request_id="order 7"), "request_id", "format", "request_id"),
    Bad("request-id-leading-dash", sale(request_id="-7"), "request_id", "format", "starting"),
    Bad(
        "payment-method-case",
        sale(payments=[{"method": "Cash", "amount": "16.70"}]),
        "payments.0.method",
        "format",
        "lowercase",
    ),
    # -- document shape -------------------------------------------------------------------------
    Bad("malformed-json", b'{"request_id": "r", ', "(document)", "json", "JSON"),
    Bad("not-utf8", b'{"request_id": "\xff"}', "(document)", "json", "JSON"),
    Bad("json-list", [sale()], "(document)", "type-object", "object"),
    Bad("json-string", '"a sale"', "(document)", "type-object", "object"),
    Bad("json-deeply-nested", "[" * 100_000, "(document)", "json", "deeply"),
    Bad(
        "json-huge-number", '{"request_id": 1' + "0" * 5000 + "}", "(document)", "json", "too long"
    ),
    Bad(
        "duplicate-key",
        '{"request_id": "x", "register": "KASSE-1", "kind": "null", "kind": "standard"}',
        "(document)",
        "duplicate-key",
        "'kind'",
    ),
    Bad("unknown-field", sale(discount="10%"), "discount", "unknown-field", "discount"),
    Bad("unknown-line-field", _one_line(note="x"), "lines.0.note", "unknown-field", "note"),
    Bad("unknown-kind", sale(kind="refund"), "kind", "allowed-values", "refund"),
    Bad("kind-start", sale(kind="start"), "kind", "allowed-values", "start"),
    Bad("lines-not-a-list", sale(lines={"0": _line()}), "lines", "type-list", "list"),
    Bad("line-not-an-object", sale(lines=["Schnitzel"]), "lines.0", "type-object", "Line"),
    Bad("501-lines", sale(lines=[_line()] * 501), "lines", "max-items", "500"),
    Bad(
        "21-payments",
        sale(payments=[{"method": "cash", "amount": "0.01"}] * 21),
        "payments",
        "max-items",
        "20",
    ),
    Bad("no-lines", sale(lines=[]), "lines", "min-items", "line"),
    Bad("lines-missing", _without("lines"), "lines", "min-items", "line"),
    Bad("no-payments", sale(payments=[]), "payments", "min-items", "payment"),
    Bad("training-no-lines", sale(kind="training", lines=[]), "lines", "min-items", "training"),
    # -- storno and null ---------------------------------------------------------------------------
    Bad("storno-unknown", _storno(voids=99), "voids", "voids-unknown", "99"),
    Bad("storno-of-storno", _storno(voids=4), "voids", "voids-kind", "storno"),
    Bad("storno-of-start", _storno(voids=1), "voids", "voids-kind", "start"),
    Bad("storno-twice", _storno(voids=3), "voids", "already-voided", "already voided"),
    Bad("storno-without-voids", _storno(), "voids", "required", "voided receipt"),
    Bad("storno-voids-string", _storno(voids="2"), "voids", "type-integer", "JSON integer"),
    Bad("storno-voids-bool", _storno(voids=True), "voids", "type-integer", "integer"),
    Bad("storno-voids-zero", _storno(voids=0), "voids", "minimum", "1"),
    Bad("storno-voids-too-large", _storno(voids=2**63), "voids", "maximum", "JSON integer"),
    Bad(
        "storno-with-lines",
        _storno(voids=2, lines=[_line()]),
        "lines",
        "storno-no-lines",
        "no lines",
    ),
    Bad(
        "storno-wrong-refund",
        _storno(voids=2, payments=[{"method": "cash", "amount": "-10.00"}]),
        "payments",
        "sum-matches-lines",
        "minus the voided total",
    ),
    Bad("voids-on-standard", sale(voids=2), "voids", "storno-only", "storno"),
    Bad("voids-on-null", _null(voids=2), "voids", "storno-only", "storno"),
    Bad("null-with-lines", _null(lines=[_line()]), "lines", "null-empty", "Nullbeleg"),
    Bad(
        "null-with-payments",
        _null(payments=[{"method": "cash", "amount": "0.00"}]),
        "payments",
        "null-empty",
        "Nullbeleg",
    ),
    # -- state of the register -----------------------------------------------------------------
    Bad(
        "request-id-reused",
        sale(request_id="req-1", cashier="Other"),
        "request_id",
        "request-id-reused",
        "different sale",
    ),
    Bad(
        "after-schlussbeleg",
        sale(request_id="late"),
        "register",
        "register-closed",
        "Schlussbeleg",
        closes=True,
    ),
    Bad(
        "storno-after-schlussbeleg",
        _storno(voids=2),
        "register",
        "register-closed",
        "Schlussbeleg",
        closes=True,
    ),
]
CASES = [pytest.param(bad, id=bad.id) for bad in BAD_SALES]
OPEN_CASES = [pytest.param(bad, id=bad.id) for bad in BAD_SALES if not bad.closes]


@pytest.fixture(name="history")
def _history(service: ReceiptService) -> ReceiptService:
    """KASSE-1 with receipts 1 (start), 2 and 3 (sales) and 4 (storno of 3)."""
    service.issue(sale(request_id="req-1"))
    service.issue(sale(request_id="req-2"))
    service.issue(_storno(request_id="req-3", voids=3))
    return service


def _state(query: Query) -> tuple[object, ...]:
    """Everything a bad sale must not touch: the register rows, receipts and journal size."""
    registers = [tuple(r) for r in query("SELECT * FROM registers ORDER BY id")]
    (counts,) = query(
        "SELECT (SELECT count(*) FROM receipts), (SELECT count(*) FROM journal),"
        " (SELECT max(seq) FROM journal)"
    )
    return (registers, tuple(counts))


def _refuse(service: ReceiptService, bad: Bad) -> InvalidSale:
    if bad.closes:
        service.issue_special(REGISTER, "closing")
    with pytest.raises(InvalidSale) as refused:
        service.issue(bad.body())
    return refused.value


def test_there_are_enough_distinct_cases() -> None:
    """The catalogue covers at least 24 distinct refusals, each with its own id."""
    ids = [bad.id for bad in BAD_SALES]
    assert len(set(ids)) == len(ids) >= 24
    assert len({(bad.field, bad.rule) for bad in BAD_SALES}) >= 24


class TestBadSales:
    @pytest.mark.parametrize("bad", CASES)
    def test_the_refusal_names_field_and_rule(self, history: ReceiptService, bad: Bad) -> None:
        """The error carries the offending field, the broken rule and a helpful sentence."""
        error = _refuse(history, bad)
        assert (error.field, error.rule) == (bad.field, bad.rule), error.message
        assert bad.mentions.lower() in error.message.lower()
        assert error.as_dict() == {"field": bad.field, "rule": bad.rule, "message": error.message}
        assert str(error).startswith(f"{bad.field}: ")

    @pytest.mark.parametrize("bad", CASES)
    def test_nothing_is_consumed(self, history: ReceiptService, query: Query, bad: Bad) -> None:
        """No number, no counter change, no receipt and no journal event for a bad sale."""
        if bad.closes:
            history.issue_special(REGISTER, "closing")
        before = _state(query)
        with pytest.raises(InvalidSale):
            history.issue(bad.body())
        assert _state(query) == before

    @pytest.mark.parametrize("bad", OPEN_CASES)
    def test_the_next_valid_sale_gets_the_next_number(
        self, history: ReceiptService, query: Query, bad: Bad
    ) -> None:
        """After the refusal the register carries on at number 5, chained to receipt 4."""
        _refuse(history, bad)
        result = history.issue(sale(request_id="next"))
        assert (result.number, result.signature_state) == (5, "signed")
        (row,) = query("SELECT last_number, turnover_cents FROM registers WHERE id = ?", REGISTER)
        assert tuple(row) == (5, 2 * 1670)

    def test_a_bad_sale_never_reaches_the_unit(
        self, history: ReceiptService, registry: UnitRegistry, unit_config: UnitConfig
    ) -> None:
        """Validation comes before signing: no refused sale ever asks the unit for a signature."""
        counting = FlakyUnit(open_unit(unit_config))
        registry.put(counting)
        for bad in BAD_SALES:
            if not bad.closes:
                with pytest.raises(InvalidSale):
                    history.issue(bad.body())
        assert counting.calls == 0
