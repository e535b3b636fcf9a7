"""The sale contract (agent/contract.py): decimal strings, cents and rounding half up."""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import pydantic_core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.contract import (
    _RULES,
    MAX_CENTS,
    Line,
    ReceiptResult,
    Sale,
    _visible,
    check_reference,
    line_total_cents,
    parse_sale,
)
from agent.errors import InvalidSale
from factories import sale

# the example database would be written to the working directory (the repository)
PROPERTY = settings(database=None, max_examples=400)


def _line(qty: str, unit_price: str, vat: str = "normal") -> Line:
    return Line(text="Artikel", qty=qty, unit_price=unit_price, vat=vat)  # type: ignore[arg-type]


def _reference_cents(qty: str, unit_price: str) -> int:
    """Integer-only reference: thousandths of a unit times cents, rounded half away from zero."""

    def scaled(text: str, places: int) -> int:
        negative = text.startswith("-")
        whole, _, frac = text.lstrip("-").partition(".")
        value = int(whole + (frac + "0" * places)[:places])  # the digits without the point
        return -value if negative else value

    product = scaled(qty, 3) * scaled(unit_price, 2)  # in 1/1000 cent
    magnitude = (abs(product) + 500) // 1000
    return -magnitude if product < 0 else magnitude


def _decimal(max_whole: int, places: int) -> st.SearchStrategy[str]:
    """Valid contract strings: optional minus, 1..max_whole digits, optional 1..places decimals."""
    whole = st.integers(0, 10**max_whole - 1).map(str)
    frac = st.one_of(
        st.just(""),
        st.integers(1, places).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n)),
    )
    sign = st.sampled_from(["", "-"])
    return st.builds(lambda s, w, f: f"{s}{w}.{f}" if f else f"{s}{w}", sign, whole, frac)


QTY = _decimal(7, 3)
PRICE = _decimal(10, 2)


def _parse_line(**line: Any) -> Sale:
    """Parse a sale of one line; the payment is computed so only the line itself is tested."""
    doc = sale(lines=[{"text": "Artikel", "vat": "normal"} | line])
    parsed_line = Line.model_validate(doc["lines"][0])
    cents = line_total_cents(parsed_line)
    sign = "-" if cents < 0 else ""
    doc["payments"] = [
        {"method": "cash", "amount": f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"}
    ]
    return parse_sale(doc)


class TestLineTotalCents:
    @pytest.mark.parametrize(
        ("qty", "unit_price", "cents"),
        [
            ("1", "12.50", 1250),
            ("2", "2.10", 420),
            ("3", "0.1", 30),
            ("0.5", "0.01", 1),  # 0.5 cent: half up
            ("1.5", "0.01", 2),  # 1.5 cents: half up, not to even
            ("2.5", "0.01", 3),  # 2.5 cents: half up (banker's rounding would give 2)
            ("0.125", "0.04", 1),  # 0.5 cent from three decimals
            ("0.049", "0.10", 0),  # 0.49 cent: down
            ("0.333", "1.50", 50),  # 49.95 cents
            ("0.250", "3.99", 100),  # 99.75 cents
            ("1.005", "1.00", 101),  # 100.5 cents
        ],
    )
    def test_rounds_half_up_to_the_cent(self, qty: str, unit_price: str, cents: int) -> None:
        """Quantity times price is rounded to whole cents, a half cent going up."""
        assert line_total_cents(_line(qty, unit_price)) == cents

    @pytest.mark.parametrize(
        ("qty", "unit_price", "cents"),
        [
            ("1", "-1.50", -150),  # a discount line
            ("-1", "12.50", -1250),  # a returned item
            ("-2", "-0.25", 50),  # a returned discount adds again
            ("0.5", "-0.01", -1),  # half a cent of discount: away from zero
            ("-2.5", "0.01", -3),
            ("-0.049", "0.10", 0),  # never "-0"
        ],
    )
    def test_negative_lines_round_away_from_zero(
        self, qty: str, unit_price: str, cents: int
    ) -> None:
        """Discounts and returns mirror sales: a half cent rounds away from zero."""
        assert line_total_cents(_line(qty, unit_price)) == cents

    def test_the_largest_line_is_exact(self) -> None:
        """7+3 quantity digits times 10+2 price digits lose nothing to Decimal precision."""
        total = line_total_cents(_line("9999999.999", "9999999999.99"))
        assert total == _reference_cents("9999999.999", "9999999999.99")
        assert total == (9_999_999_999 * 999_999_999_999 + 500) // 1000  # thousandths x cents

    @PROPERTY
    @given(qty=QTY, unit_price=PRICE)
    def test_matches_an_integer_reference(self, qty: str, unit_price: str) -> None:
        """For every valid quantity and price the cents equal exact integer arithmetic."""
        assert line_total_cents(_line(qty, unit_price)) == _reference_cents(qty, unit_price)

    @PROPERTY
    @given(qty=QTY, unit_price=PRICE)
    def test_negating_quantity_or_price_negates_the_total(self, qty: str, unit_price: str) -> None:
        """A storno line is the exact mirror of its sale line, whatever the rounding."""
        total = line_total_cents(_line(qty, unit_price))
        negated_qty = qty[1:] if qty.startswith("-") else f"-{qty}"
        negated_price = unit_price[1:] if unit_price.startswith("-") else f"-{unit_price}"
        assert line_total_cents(_line(negated_qty, unit_price)) == -total
        assert line_total_cents(_line(qty, negated_price)) == -total


class TestDecimalStrings:
    @pytest.mark.parametrize(
        ("unit_price", "cents"),
        [("12", 1200), ("12.5", 1250), ("12.50", 1250), ("007.50", 750), ("0.01", 1),
         ("-3.00", -300), ("-0", 0), ("9999999999.99", 999999999999)],
    )  # fmt: skip
    def test_money_forms_that_are_accepted(self, unit_price: str, cents: int) -> None:
        """Whole euros, one or two decimals, leading zeros and a minus sign are money."""
        assert line_total_cents(_line("1", unit_price)) == cents

    def test_strings_are_kept_as_sent(self) -> None:
        """The parsed sale keeps the POS's own spelling ("12.5"), so the printout matches it."""
        parsed = _parse_line(qty="0.250", unit_price="12.5")
        assert (parsed.lines[0].qty, parsed.lines[0].unit_price) == ("0.250", "12.5")

    @pytest.mark.parametrize(
        "unit_price",
        ["12.", ".5", "12.345", "12,50", "1e2", "1_000", " 1.00", "1.00 ", "+1.00", "--1",
         "NaN", "Infinity", "", "12345678901", "1.0\n", "\uff11.00", "\u0661.00"],
    )  # fmt: skip
    def test_money_forms_that_are_refused(self, unit_price: str) -> None:
        """Anything but -?digits(.d or .dd) is refused, including Unicode digits and newlines."""
        with pytest.raises(InvalidSale) as refused:
            parse_sale(
                sale(lines=[{"text": "A", "qty": "1", "unit_price": unit_price, "vat": "zero"}])
            )
        assert (refused.value.field, refused.value.rule) == ("lines.0.unit_price", "format")

    @pytest.mark.parametrize("qty", ["1", "0.5", "0.250", "-2", "9999999.999"])
    def test_quantity_forms_that_are_accepted(self, qty: str) -> None:
        """Quantities have up to 7 digits and 3 decimals and may be negative (returns)."""
        assert _parse_line(qty=qty, unit_price="1.00").lines[0].qty == qty

    @pytest.mark.parametrize("qty", ["1.2345", "12345678", "1.", "½", "2x", "1e0"])
    def test_quantity_forms_that_are_refused(self, qty: str) -> None:
        """Quantities with more digits or other characters are refused."""
        with pytest.raises(InvalidSale) as refused:
            parse_sale(sale(lines=[{"text": "A", "qty": qty, "unit_price": "1.00", "vat": "zero"}]))
        assert (refused.value.field, refused.value.rule) == ("lines.0.qty", "format")


class TestSaleTotals:
    def test_a_discount_line_lowers_the_total(self) -> None:
        """An item of 10.00 and a discount of -1.50 are paid with 8.50."""
        doc = sale(
            lines=[
                {"text": "Torte", "qty": "1", "unit_price": "10.00", "vat": "reduced1"},
                {"text": "Rabatt", "qty": "1", "unit_price": "-1.50", "vat": "reduced1"},
            ],
            payments=[{"method": "card", "amount": "8.50"}],
        )
        assert [line_total_cents(ln) for ln in parse_sale(doc).lines] == [1000, -150]

    def test_a_return_is_a_negative_sale(self) -> None:
        """A returned item (negative quantity) is paid back with a negative payment."""
        doc = sale(
            lines=[{"text": "Rueckgabe", "qty": "-1", "unit_price": "12.50", "vat": "normal"}],
            payments=[{"method": "cash", "amount": "-12.50"}],
        )
        assert line_total_cents(parse_sale(doc).lines[0]) == -1250

    def test_each_line_is_rounded_before_summing(self) -> None:
        """Two lines of 49.95 cents make 1.00, not the 0.999 of the unrounded sum."""
        lines = [{"text": "Wurst", "qty": "0.333", "unit_price": "1.50", "vat": "normal"}] * 2
        parse_sale(sale(lines=lines, payments=[{"method": "cash", "amount": "1.00"}]))
        with pytest.raises(InvalidSale, match=r"add up to 0\.99 but the lines to 1\.00"):
            parse_sale(sale(lines=lines, payments=[{"method": "cash", "amount": "0.99"}]))

    def test_payments_may_be_split_and_spelled_freely(self) -> None:
        """16.70 paid as "10" and "6.7" matches lines of 16.70."""
        payments = [{"method": "cash", "amount": "10"}, {"method": "card", "amount": "6.7"}]
        assert len(parse_sale(sale(payments=payments)).payments) == 2

    def test_a_receipt_may_total_exactly_the_maximum(self) -> None:
        """One billion euros is still a valid receipt total; one cent more is not."""
        euros = f"{MAX_CENTS // 100}.00"
        line = {"text": "Insel", "qty": "1", "unit_price": euros, "vat": "zero"}
        parse_sale(sale(lines=[line], payments=[{"method": "bank", "amount": euros}]))
        cent = {"text": "Trinkgeld", "qty": "1", "unit_price": "0.01", "vat": "zero"}
        with pytest.raises(InvalidSale) as refused:
            parse_sale(sale(lines=[line, cent], payments=[{"method": "bank", "amount": euros}]))
        assert (refused.value.field, refused.value.rule) == ("lines", "max-amount")

    @pytest.mark.parametrize(
        ("qty", "unit_price", "payments", "field"),
        [
            ("1000", "1000000.01", ["1000000010.00"], "lines.0"),
            ("1", "999999999.99", ["1999999999.98"], "lines"),
            ("1000", "1000000.01", ["9999999999.99", "-8999999989.99"], "lines.0"),
        ],
        ids=["line-paid-exactly", "receipt-paid-exactly", "line-paid-in-two"],
    )
    def test_an_amount_over_the_limit_is_named_on_the_lines(
        self, qty: str, unit_price: str, payments: list[str], field: str
    ) -> None:
        """The lines are checked before the payments: a line (or receipt) over the limit,
        paid exactly, is refused on the lines, not on the payment that matches it."""
        line = {"text": "Insel", "qty": qty, "unit_price": unit_price, "vat": "zero"}
        lines = [line] if field == "lines.0" else [line, line]
        paid = [{"method": "bank", "amount": amount} for amount in payments]
        with pytest.raises(InvalidSale) as refused:
            parse_sale(sale(lines=lines, payments=paid))
        assert (refused.value.field, refused.value.rule) == (field, "max-amount")

    def test_the_payment_error_states_both_sums(self) -> None:
        """A mismatch names the payments and gives both totals in euros."""
        with pytest.raises(InvalidSale) as refused:
            parse_sale(sale(payments=[{"method": "cash", "amount": "-16.70"}]))
        assert refused.value.message == "payments add up to -16.70 but the lines to 16.70"


class TestParseSale:
    @pytest.mark.parametrize(
        "form",
        [
            pytest.param(lambda d: d, id="dict"),
            pytest.param(json.dumps, id="str"),
            pytest.param(lambda d: json.dumps(d).encode(), id="bytes"),
            pytest.param(lambda d: b"\xef\xbb\xbf" + json.dumps(d).encode(), id="bytes-with-bom"),
            pytest.param(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-16"), id="utf16"),
        ],
    )
    def test_accepts_every_form_of_the_same_sale(self, form: Any) -> None:
        """A decoded object, JSON text or JSON bytes (BOM and UTF-16 included) give one sale."""
        assert parse_sale(form(sale(cashier="Jürgen"))) == parse_sale(sale(cashier="Jürgen"))

    def test_the_register_travels_as_register(self) -> None:
        """The wire name is "register"; the field name register_id is not accepted in its place."""
        assert parse_sale(sale()).register_id == "KASSE-1"
        doc = sale()
        doc["register_id"] = doc.pop("register")
        with pytest.raises(InvalidSale) as refused:
            parse_sale(doc)
        assert refused.value.field in {"register", "register_id"}

    def test_umlauts_and_symbols_are_text(self) -> None:
        """Printable Unicode (umlauts, the euro sign) is fine in texts."""
        parsed = _parse_line(text="Käsekrainer mit Senf (€)", qty="1", unit_price="4.90")
        assert parsed.lines[0].text == "Käsekrainer mit Senf (€)"

    def test_a_sale_is_immutable(self) -> None:
        """The parsed sale is frozen, so nothing changes it between hashing and issuing."""
        parsed = parse_sale(sale())
        with pytest.raises(ValidationError):
            parsed.request_id = "other"  # type: ignore[misc]

    def test_the_first_error_is_reported(self) -> None:
        """With several problems, one clear error is raised, not a list."""
        with pytest.raises(InvalidSale) as refused:
            parse_sale({"register": "K_1", "kind": "nope"})
        assert refused.value.field in {"request_id", "register", "kind"}


# What a node of pydantic's core schema can raise: by its type, then by each constraint.
_ERRORS_OF_NODE = {
    "model": {"model_type"},
    "model-fields": {"missing", "extra_forbidden"},
    "model-field": set(),
    "default": set(),
    "nullable": set(),
    "str": {"string_type", "string_unicode"},
    "int": {"int_type"},
    "list": {"list_type"},
    "literal": {"literal_error"},
    "function-after": set(),  # its function's errors: _ERRORS_OF_FUNCTION
}
_ERRORS_OF_FUNCTION = {_visible: {"hidden_character", "blank_text"}}
_ERRORS_OF_CONSTRAINT = {
    ("str", "min_length"): "string_too_short",
    ("str", "max_length"): "string_too_long",
    ("str", "pattern"): "string_pattern_mismatch",
    ("int", "ge"): "greater_than_equal",
    ("int", "gt"): "greater_than",
    ("int", "le"): "less_than_equal",
    ("int", "lt"): "less_than",
    ("int", "multiple_of"): "multiple_of",
    ("list", "min_length"): "too_short",
    ("list", "max_length"): "too_long",
}
_CHILDREN = ("schema", "items_schema")  # keys holding one nested node
_NOT_CONSTRAINTS = {
    *_CHILDREN,
    *("type", "fields", "cls", "config", "custom_init", "metadata", "ref", "root_model"),
    *("computed_fields", "model_name", "default", "expected", "strict"),
    *("serialization_alias", "validation_alias"),
}
_PYDANTIC_TYPES = set(typing.get_args(pydantic_core.core_schema.ErrorType))


def _errors_of(node: Mapping[str, Any]) -> Iterator[str]:
    """Every error type ``node`` and the nodes below it can raise; fails on a node type or
    constraint this walker does not know, so a new kind of constraint cannot slip by."""
    kind = node["type"]
    assert kind in _ERRORS_OF_NODE, f"a {kind!r} node: teach _ERRORS_OF_NODE its errors"
    yield from _ERRORS_OF_NODE[kind]
    for key, value in node.items():
        if key in _CHILDREN:
            yield from _errors_of(value)
        elif key == "fields":
            for field in value.values():
                yield from _errors_of(field)
        elif key == "function":
            function = value["function"]
            assert function in _ERRORS_OF_FUNCTION, f"{function}: teach _ERRORS_OF_FUNCTION"
            yield from _ERRORS_OF_FUNCTION[function]
        else:
            assert key in _NOT_CONSTRAINTS or (kind, key) in _ERRORS_OF_CONSTRAINT, (
                f"the {kind!r} constraint {key!r}: teach _ERRORS_OF_CONSTRAINT its error"
            )
            if (kind, key) in _ERRORS_OF_CONSTRAINT:
                yield _ERRORS_OF_CONSTRAINT[kind, key]


def _rule_of(doc: Any) -> str:
    """The rule of the refusal of ``doc``, or "" when it is a valid sale."""
    try:
        parse_sale(doc)
    except InvalidSale as refused:
        return refused.rule
    return ""


class TestRuleNames:
    def test_every_error_the_sale_model_can_raise_has_a_rule_name(self) -> None:
        """Walking the model's constraints finds no pydantic error type without a rule."""
        raised = set(_errors_of(Sale.__pydantic_core_schema__))
        assert {"less_than_equal", "greater_than_equal", "string_unicode"} <= raised
        custom = {error for errors in _ERRORS_OF_FUNCTION.values() for error in errors}
        assert raised <= _PYDANTIC_TYPES | custom  # the walker names real error types
        assert sorted(raised - set(_RULES)) == []

    def test_no_rule_name_is_a_pydantic_error_type(self) -> None:
        """The POS only ever sees the project's names ("maximum", not "less_than_equal")."""
        for rule in set(_RULES.values()):
            assert rule.replace("-", "_") not in _PYDANTIC_TYPES, rule

    @pytest.mark.parametrize(
        ("voids", "rule"), [(0, "minimum"), (2**63, "maximum"), (2**70, "maximum")]
    )
    def test_voids_out_of_range_names_the_bound(self, voids: int, rule: str) -> None:
        doc = {"request_id": "s", "register": "KASSE-1", "kind": "storno", "voids": voids}
        with pytest.raises(InvalidSale) as refused:
            parse_sale(doc)
        assert (refused.value.field, refused.value.rule) == ("voids", rule)
        assert "JSON integer" in refused.value.message

    @PROPERTY
    @given(
        path=st.sampled_from(
            [("request_id",), ("register",), ("kind",), ("voids",), ("cashier",), ("lines",)]
            + [("payments",), ("lines", 0), ("payments", 0), ("extra",)]
            + [("lines", 0, key) for key in ("text", "qty", "unit_price", "vat", "x")]
            + [("payments", 0, key) for key in ("method", "amount", "x")]
        ),
        value=st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**80), 2**80)
            | st.floats()
            | st.text(max_size=200),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
            max_leaves=5,
        ),
    )
    def test_any_bad_value_anywhere_gets_a_project_rule(
        self, path: tuple[Any, ...], value: Any
    ) -> None:
        """Whatever a field holds, a refusal never carries a raw pydantic error type."""
        doc: Any = sale()
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        rule = _rule_of(doc)
        assert rule.replace("-", "_") not in _PYDANTIC_TYPES
        assert rule != "invalid"


class TestHiddenCharacters:
    @pytest.mark.parametrize(
        ("char", "named", "why"),
        [
            ("\u202e", "U+202E (RIGHT-TO-LEFT OVERRIDE)", "invisible format character"),
            ("\u200b", "U+200B (ZERO WIDTH SPACE)", "invisible format character"),
            ("\u2066", "U+2066 (LEFT-TO-RIGHT ISOLATE)", "invisible format character"),
            ("\u00ad", "U+00AD (SOFT HYPHEN)", "invisible format character"),
            ("\ufeff", "U+FEFF (ZERO WIDTH NO-BREAK SPACE)", "invisible format character"),
            ("\U000e0041", "U+E0041 (TAG LATIN CAPITAL LETTER A)", "invisible format character"),
            ("\ue000", "U+E000", "private-use"),
            ("\U000f0000", "U+F0000", "private-use"),
            ("\u0378", "U+0378", "unassigned"),
            ("\ud800", "U+D800", "surrogate"),
            ("\u2028", "U+2028 (LINE SEPARATOR)", "line break"),
        ],
    )
    @pytest.mark.parametrize("field", ["lines.0.text", "cashier"])
    def test_a_text_with_a_hidden_character_is_refused(
        self, field: str, char: str, named: str, why: str
    ) -> None:
        """The refusal names the field, the rule and the character with the reason."""
        doc = sale(cashier="Anna")
        if field == "cashier":
            doc["cashier"] = f"Anna{char}Berg"
        else:
            doc["lines"][0]["text"] = f"Schnitzel{char}Wiener Art"
        with pytest.raises(InvalidSale) as refused:
            parse_sale(json.dumps(doc).encode())  # as the POS sends it (surrogates escaped)
        assert (refused.value.field, refused.value.rule) == (field, "format")
        assert f"the character {named} is not allowed" in refused.value.message
        assert why in refused.value.message

    def test_names_emoji_and_letters_of_every_script_are_text(self) -> None:
        """Visible characters pass, even those the printer cannot print (they print as ?)."""
        texts = ["Dvořák Łukasz Erdős", "Kaffee ☕ 😀 ❤\ufe0f", "Café", "Cafe\u0301", "日本茶"]
        for text in texts:
            assert parse_sale(sale(cashier=text)).cashier == text


# texts with no character that prints as something: spaces of any width, marks with
# nothing to sit on, fillers and the blank braille pattern
BLANK_TEXTS = [
    " ",
    "   ",
    "\u3000\u00a0",
    "\u2003\u2009",
    "\u0301",
    " \u0301\u20dd ",
    "\u3164",
    "\u115f\u1160",
    "\uffa0",
    "\u2800",
]
VISIBLE_TEXTS = [
    " x ",
    "-",
    ".",
    "Cafe\u0301",
    "e\u0301",
    "\u00a0A",
    "拉面",
    "🍺",
    "ß",
    "\u0905\u0903",
]


class TestBlankTexts:
    @pytest.mark.parametrize("text", BLANK_TEXTS)
    @pytest.mark.parametrize("field", ["lines.0.text", "cashier"])
    def test_a_text_that_prints_as_nothing_is_refused(self, field: str, text: str) -> None:
        """An item or cashier name with no visible character is refused: rule ``blank``."""
        doc = sale(cashier="Anna")
        if field == "cashier":
            doc["cashier"] = text
        else:
            doc["lines"][0]["text"] = text
        with pytest.raises(InvalidSale) as refused:
            parse_sale(json.dumps(doc).encode())
        assert (refused.value.field, refused.value.rule) == (field, "blank")
        assert "no visible character" in refused.value.message

    @pytest.mark.parametrize("text", VISIBLE_TEXTS)
    def test_a_text_with_one_visible_character_is_text(self, text: str) -> None:
        """Spaces and marks around a letter, a sign or a syllable are fine."""
        doc = sale(cashier=text)
        doc["lines"][0]["text"] = text
        parsed = parse_sale(doc)
        assert (parsed.cashier, parsed.lines[0].text) == (text, text)

    @pytest.mark.parametrize("text", BLANK_TEXTS)
    def test_a_reference_that_prints_as_nothing_is_required(self, text: str) -> None:
        """An operator's reference of nothing visible is no reference: rule ``required``."""
        with pytest.raises(InvalidSale) as refused:
            check_reference(text, "FinanzOnline")
        assert (refused.value.field, refused.value.rule) == ("reference", "required")

    @pytest.mark.parametrize("text", VISIBLE_TEXTS)
    def test_a_reference_with_a_visible_character_is_taken(self, text: str) -> None:
        check_reference(text, "FinanzOnline")


class TestReceiptResult:
    def test_serializes_with_the_wire_names(self) -> None:
        """The POS gets "register", as it sent it, in the JSON result."""
        result = ReceiptResult(
            register="KASSE-1",  # type: ignore[call-arg]
            number=2,
            receipt_id="2",
            kind="standard",
            signature_state="signed",
            qr="_R1-AT1_...",
            ocr="_R1-AT1_...",
            jws="a.b.c",
            issued_at="2026-03-02T11:00:00",
            lines=["Kasse KASSE-1"],
        )
        dumped = json.loads(result.model_dump_json())
        assert dumped["register"] == "KASSE-1"
        assert "register_id" not in dumped
