"""The receipt text (agent/receipt_text.py): 42 columns, and nothing the POS sent is cut."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.at_rksv import FALLBACK_TEXT
from agent.contract import Line, line_total_cents
from agent.printing import render_escpos
from agent.receipt_text import (
    WIDTH,
    TextFacts,
    columns,
    headings,
    render_lines,
    vat_split,
    wrap,
)
from agent.receipts import ReceiptService
from factories import sale

# the example database would be written to the working directory (the repository)
PROPERTY = settings(database=None, max_examples=300)
BREAD = "Bio-Vollkornbrot mit Sonnenblumenkernen, Kürbiskernen und Leinsamen, 1000 g Laib"
assert len(BREAD) == 80


def _facts(**overrides: Any) -> TextFacts:
    fields: dict[str, Any] = {
        "register_id": "KASSE-1",
        "receipt_id": "2",
        "kind": "standard",
        "issued_at": "2026-03-02T11:00:00",
        "signature_state": "signed",
        "amounts": (1250, 420, 0, 0, 0),
        "lines": [
            ("Schnitzel", "1", "12.50", "normal", 1250),
            ("Apfelsaft", "2", "2.10", "reduced1", 420),
        ],
        "payments": [("cash", 1670)],
    }
    return TextFacts(**(fields | overrides))


def _one_item(text: str, total: int = 100) -> TextFacts:
    return _facts(lines=[(text, "1", "1.00", "normal", total)], amounts=(total, 0, 0, 0, 0))


def _items(lines: list[str]) -> list[str]:
    """The lines between the two rulers."""
    first = lines.index("-" * WIDTH)
    return lines[first + 1 : lines.index("-" * WIDTH, first + 1)]


def _without_spaces(text: str) -> str:
    return text.replace(" ", "")


class TestShortTexts:
    def test_a_receipt_of_short_texts_keeps_its_layout(self) -> None:
        """The layout of texts that fit is byte for byte what it always was."""
        assert render_lines(_facts(cashier="Anna")) == [
            "Kasse KASSE-1",
            "Beleg 2",
            "2026-03-02 11:00:00",
            "Bediener: Anna",
            "-" * 42,
            "Schnitzel                          12,50 A",
            "  2 x 2,10",
            "Apfelsaft                           4,20 B",
            "-" * 42,
            "SUMME EUR                            16,70",
            "  cash                               16,70",
            "MwSt             Netto    Steuer    Brutto",
            "  A 20%          10,42      2,08     12,50",
            "  B 10%           3,82      0,38      4,20",
        ]

    def test_a_text_that_just_fits_stays_on_one_line(self) -> None:
        """35 characters beside "1,00 A" fill the 42 columns exactly."""
        text = "x" * 35
        assert _items(render_lines(_one_item(text))) == [f"{text} 1,00 A"]


def _rates(lines: list[str]) -> list[str]:
    """The VAT table: the lines after the payments, up to a notice."""
    return lines[lines.index("MwSt             Netto    Steuer    Brutto") :]


class TestAmountsPerRate:
    """§ 132a Abs 3 BAO, § 11 UStG: the amounts split by tax rate, gross always, net and
    tax where the class has one rate; the tax is computed on each rate's gross sum."""

    def test_each_rate_used_gets_its_gross_net_and_tax(self) -> None:
        """12,50 at 20 %: tax 12,50 * 20 / 120 = 2,083 -> 2,08; two lines of one rate are
        summed before the tax is computed (1,05 + 1,05 at 10 % = 0,1909 -> 0,19, where
        rounding each line would give 0,10 + 0,10)."""
        lines = [
            ("Schnitzel", "1", "12.50", "normal", 1250),
            ("Semmel", "1", "1.05", "reduced1", 105),
            ("Semmel", "1", "1.05", "reduced1", 105),
        ]
        assert _rates(render_lines(_facts(lines=lines, amounts=(1250, 210, 0, 0, 0)))) == [
            "MwSt             Netto    Steuer    Brutto",
            "  A 20%          10,42      2,08     12,50",
            "  B 10%           1,91      0,19      2,10",
        ]

    def test_every_class_in_order_and_special_with_its_gross_only(self) -> None:
        """'special' is 19 % or 4,9 %: which one is not known, so only its gross prints."""
        lines = [
            ("Tabak", "1", "7.00", "special", 700),
            ("Zeitung", "1", "2.00", "zero", 200),
            ("Blumen", "1", "11.30", "reduced2", 1130),
            ("Bier", "1", "4.40", "reduced1", 440),
            ("Wein", "1", "6.00", "normal", 600),
        ]
        assert _rates(render_lines(_facts(lines=lines, amounts=(600, 440, 1130, 200, 700)))) == [
            "MwSt             Netto    Steuer    Brutto",
            "  A 20%           5,00      1,00      6,00",
            "  B 10%           4,00      0,40      4,40",
            "  C 13%          10,00      1,30     11,30",
            "  D 0%            2,00      0,00      2,00",
            "  E 19%/4,9%                          7,00",
        ]

    def test_a_storno_prints_the_amounts_negative(self) -> None:
        """The tax of a negative gross mirrors the positive one (half away from zero)."""
        lines = [("Schnitzel", "1", "12.50", "normal", -1250), ("Tabak", "1", "7", "special", -700)]
        facts = _facts(kind="storno", lines=lines, amounts=(-1250, 0, 0, 0, -700), payments=[])
        assert _rates(render_lines(facts)) == [
            "MwSt             Netto    Steuer    Brutto",
            "  A 20%         -10,42     -2,08    -12,50",
            "  E 19%/4,9%                         -7,00",
        ]

    def test_the_notices_follow_the_rates(self) -> None:
        lines = render_lines(_facts(signature_state="fallback"))
        assert lines[-4:] == [
            "MwSt             Netto    Steuer    Brutto",
            "  A 20%          10,42      2,08     12,50",
            "  B 10%           3,82      0,38      4,20",
            "Sicherheitseinrichtung ausgefallen",
        ]

    def test_a_receipt_without_lines_prints_no_rates(self) -> None:
        """A Nullbeleg and the special receipts have no items and no rate lines."""
        for kind in ("null", "start", "monthly", "sammelbeleg"):
            lines = render_lines(_facts(kind=kind, lines=[], payments=[], amounts=(0, 0, 0, 0, 0)))
            assert lines[-2:] == ["-" * WIDTH, "SUMME EUR                             0,00"]

    def test_amounts_without_item_lines_get_their_table(self) -> None:
        """A replayed official scenario signs amounts only: the table comes from the
        receipt's amounts per class, not from item lines."""
        facts = _facts(lines=[], amounts=(1250, 420, 0, 0, 700), payments=[])
        assert _rates(render_lines(facts)) == [
            "MwSt             Netto    Steuer    Brutto",
            "  A 20%          10,42      2,08     12,50",
            "  B 10%           3,82      0,38      4,20",
            "  E 19%/4,9%                          7,00",
        ]

    def test_amounts_too_wide_for_the_table_get_lines_of_their_own(self) -> None:
        """A billion euros does not fit a column of 9: each amount stands on its own line."""
        lines = [("Haus", "1", "1", "normal", -(10**11)), ("Tabak", "1", "1", "special", 10**11)]
        rates = render_lines(_facts(lines=lines, amounts=(-(10**11), 0, 0, 0, 10**11)))[-4:]
        assert rates == [
            "  A 20% Brutto              -1000000000,00",
            "    Netto                    -833333333,33",
            "    Steuer                   -166666666,67",
            "  E 19%/4,9% Brutto          1000000000,00",
        ]
        assert all(len(line) <= WIDTH for line in rates)

    @pytest.mark.parametrize(
        ("amounts", "rates"),
        [
            (
                (99_999_999, -9_999_999, 0, 0, 0),
                [
                    "MwSt             Netto    Steuer    Brutto",
                    "  A 20%      833333,32 166666,67 999999,99",
                    "  B 10%      -90909,08  -9090,91 -99999,99",
                ],
            ),
            (
                (-(10**7), 0, 0, 0, 0),
                [
                    "  A 20% Brutto                  -100000,00",
                    "    Netto                        -83333,33",
                    "    Steuer                       -16666,67",
                ],
            ),
            (
                (10**8, 0, 0, 0, 0),
                [
                    "  A 20% Brutto                  1000000,00",
                    "    Netto                        833333,33",
                    "    Steuer                       166666,67",
                ],
            ),
        ],
    )
    def test_the_table_holds_amounts_of_nine_characters(
        self, amounts: tuple[int, int, int, int, int], rates: list[str]
    ) -> None:
        """The largest and the smallest amounts of a column (999999,99 and -99999,99) stay
        in the table; one more cent each way and every amount gets a line of its own."""
        lines = render_lines(_facts(lines=[], amounts=amounts, payments=[]))
        assert lines[-len(rates) :] == rates

    @pytest.mark.parametrize(
        ("gross", "rate", "split"),
        [
            (1250, 20, (1042, 208)),  # 208,33
            (3, 20, (2, 1)),  # 0,5: half up
            (-3, 20, (-2, -1)),
            (11, 10, (10, 1)),  # 1,0 exactly
            (113, 13, (100, 13)),
            (999, 0, (999, 0)),
            (0, 20, (0, 0)),
        ],
    )
    def test_the_tax_is_rounded_half_up_on_the_gross(
        self, gross: int, rate: int, split: tuple[int, int]
    ) -> None:
        assert vat_split(gross, rate) == split

    @PROPERTY
    @given(gross=st.integers(-(10**11), 10**11), rate=st.sampled_from([0, 10, 13, 20]))
    def test_net_and_tax_add_up_to_the_gross(self, gross: int, rate: int) -> None:
        """Net + tax is the gross, and the tax is within half a cent of the exact one."""
        net, tax = vat_split(gross, rate)
        assert net + tax == gross
        assert abs(tax * (100 + rate) - gross * rate) * 2 <= 100 + rate
        assert vat_split(-gross, rate) == (-net, -tax)


class TestLongTexts:
    def test_an_80_character_item_text_is_printed_whole(self) -> None:
        """The text wraps at spaces; the amount closes the item on its last line."""
        items = _items(render_lines(_one_item(BREAD)))
        assert items == [
            "Bio-Vollkornbrot mit Sonnenblumenkernen,",
            "Kürbiskernen und Leinsamen, 1000 g Laib",
            f"{'':<35} 1,00 A",
        ]

    def test_the_amount_stands_beside_a_last_line_with_room(self) -> None:
        text = BREAD.removesuffix(" 1000 g Laib")
        items = _items(render_lines(_one_item(text)))
        assert items == [
            "Bio-Vollkornbrot mit Sonnenblumenkernen,",
            f"{'Kürbiskernen und Leinsamen,':<35} 1,00 A",
        ]

    def test_a_text_without_spaces_is_broken_inside_the_word(self) -> None:
        text = "Donaudampfschifffahrtsgesellschaftskapitänsmützenabzeichenhalterungsschraube"
        items = _items(render_lines(_one_item(text)))
        assert items == [text[:42], f"{text[42:]:<35} 1,00 A"]

    def test_the_amount_gets_a_line_of_its_own_when_the_text_leaves_no_room(self) -> None:
        """A last text line of 40 columns leaves no room for " 1,00 A": the amount follows."""
        text = "a" * 40 + " " + "b" * 39
        items = _items(render_lines(_one_item(text)))
        assert items == ["a" * 40, "b" * 39, f"{'':<35} 1,00 A"]

    def test_a_quantity_line_still_comes_first(self) -> None:
        facts = _facts(lines=[(BREAD, "2", "1.00", "normal", 200)], amounts=(200, 0, 0, 0, 0))
        items = _items(render_lines(facts))
        assert items[0] == "  2 x 1,00"
        assert items[-1].endswith(" 2,00 A")

    def test_an_80_character_cashier_is_wrapped(self) -> None:
        cashier = "Maria-Theresia Walburga Amalia Christina von Habsburg-Lothringen, Schichtleitung"
        assert len(cashier) == 80
        lines = render_lines(_facts(cashier=cashier))
        head = lines[3 : lines.index("-" * WIDTH)]
        assert head == [
            "Bediener: Maria-Theresia Walburga Amalia",
            "Christina von Habsburg-Lothringen,",
            "Schichtleitung",
        ]

    def test_long_ids_are_wrapped(self) -> None:
        """Register and receipt ids of 64 characters (the most there is) fit the paper."""
        register, receipt = "K" * 64, "B" * 64
        facts = _facts(
            register_id=register,
            receipt_id=receipt,
            kind="storno",
            voids_receipt_id=receipt,
            replaces_receipt_id=receipt,
        )
        lines = render_lines(facts)
        assert all(len(line) <= WIDTH for line in lines)
        head = "".join(lines[: lines.index("-" * WIDTH)])
        assert head.count("K" * 64) == 1
        assert head.count("B" * 64) == 3

    def test_a_long_payment_method_with_a_large_amount(self) -> None:
        """A 32-character method beside a billion euros: the amount goes below it."""
        method = "gutschein-der-einkaufsstrasse-12"
        facts = _facts(payments=[(method, 99_999_999_999)], amounts=(99_999_999_999, 0, 0, 0, 0))
        lines = render_lines(facts)
        at = lines.index(f"  {method}")
        assert lines[at + 1] == f"{'999999999,99':>42}"

    def test_an_unsigned_receipt_explains_itself_within_the_paper(self) -> None:
        """A note true whatever the remedy finds: no promise of a re-signing (a zero
        receipt may be kept as it is)."""
        lines = render_lines(_facts(signature_state="unsigned"))
        assert lines[-1] == "Signatur ungewiss: wird geklärt"
        assert not any("nachsigniert" in line for line in lines)

    def test_an_unsigned_receipt_says_the_unit_failed(self) -> None:
        """Its code carries the failure marker, so its paper shows it (§ 17 Abs 4 RKSV),
        in bold like a fallback receipt's, before the note that it is being cleared up."""
        lines = render_lines(_facts(signature_state="unsigned"))
        assert lines[-2:] == [FALLBACK_TEXT, "Signatur ungewiss: wird geklärt"]
        assert lines.count(FALLBACK_TEXT) == 1
        assert FALLBACK_TEXT in headings("standard", "unsigned")
        assert FALLBACK_TEXT in headings("standard", "fallback")
        assert FALLBACK_TEXT not in headings("standard", "signed")
        assert FALLBACK_TEXT not in render_lines(_facts())

    @PROPERTY
    @given(
        text=st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=80),
        cashier=st.text(st.sampled_from("ab c-"), min_size=1, max_size=80),
        total=st.integers(-(10**11), 10**11),
    )
    def test_no_line_is_wider_than_the_paper(self, text: str, cashier: str, total: int) -> None:
        """Whatever the texts and amounts, every line fits 42 columns."""
        facts = _facts(
            lines=[(text or "x", "1.005", "1.00", "special", total)],
            amounts=(0, 0, 0, 0, total),
            cashier=cashier,
            payments=[("a" * 32, total)],
        )
        assert all(columns(line) <= WIDTH for line in render_lines(facts))


_QTY_LINE = re.compile(r"^  (-?[0-9]+(?:\.[0-9]+)?) x (-?[0-9]+(?:,[0-9]+)?)$")
_TOTAL = re.compile(r" (-?[0-9]+),([0-9]{2}) [A-E]$")


def _printed_items(lines: list[str]) -> list[tuple[str, str, int]]:
    """Each printed item as (quantity, unit price, total cents): "1" and the total when
    the quantity line is left out (a quantity of one)."""
    items = []
    shown: tuple[str, str] | None = None
    for line in _items(lines):
        qty_line = _QTY_LINE.match(line)
        total = _TOTAL.search(line)
        if qty_line is not None:
            shown = (qty_line[1], qty_line[2].replace(",", "."))
        elif total is not None:
            whole, cents = total[1], int(total[2])
            amount = abs(int(whole)) * 100 + cents
            amount = -amount if whole.startswith("-") else amount
            qty, price = shown or ("1", f"{amount / 100:.2f}")
            items.append((qty, price, amount))
            shown = None
    return items


class TestStornoQuantities:
    """On paper an item's quantity times its unit price is its printed total, on a Storno too."""

    def test_a_storno_prints_the_voided_quantities_negated(self) -> None:
        """The Storno of 0.333 x 3,00 (1,00) and a returned deposit (-1 x 0,50) prints
        -0,333 x 3,00 beside -1,00 and the deposit as one of 0,50."""
        lines = [("Kaffee", "0.333", "3.00", "normal", -100), ("Pfand", "-1", "0.50", "zero", 50)]
        facts = _facts(kind="storno", lines=lines, amounts=(-100, 0, 0, 50, 0), payments=[])
        assert _items(render_lines(facts)) == [
            "  -0,333 x 3,00",
            "Kaffee                             -1,00 A",
            "Pfand                               0,50 D",
        ]

    def test_a_storno_of_single_items_prints_their_quantity(self) -> None:
        """A voided quantity of one is printed as -1 (the voided receipt left it out)."""
        lines = [("Schnitzel", "1", "12.50", "normal", -1250)]
        facts = _facts(kind="storno", lines=lines, amounts=(-1250, 0, 0, 0, 0), payments=[])
        assert _items(render_lines(facts)) == [
            "  -1 x 12,50",
            "Schnitzel                         -12,50 A",
        ]

    @PROPERTY
    @given(
        qty=st.from_regex(r"\A-?[0-9]{1,4}(\.[0-9]{1,3})?\Z"),
        price=st.from_regex(r"\A-?[0-9]{1,4}(\.[0-9]{1,2})?\Z"),
        voided=st.booleans(),
    )
    def test_quantity_times_price_is_the_printed_total(
        self, qty: str, price: str, voided: bool
    ) -> None:
        """For a sold line and for the same line on its Storno (total negated)."""
        line = Line(text="X", qty=qty, unit_price=price, vat="normal")
        total = -line_total_cents(line) if voided else line_total_cents(line)
        facts = _facts(
            kind="storno" if voided else "standard",
            lines=[("X", qty, price, "normal", total)],
            amounts=(total, 0, 0, 0, 0),
        )
        (printed,) = _printed_items(render_lines(facts))
        shown = Line(text="X", qty=printed[0], unit_price=printed[1], vat="normal")
        assert printed[2] == total
        assert line_total_cents(shown) == total


class TestWrap:
    @PROPERTY
    @given(text=st.text(st.sampled_from("ab c\u0301"), max_size=200), width=st.integers(1, 50))
    def test_wrapping_keeps_every_character_but_one_space_per_break(
        self, text: str, width: int
    ) -> None:
        """Lines fit the width; only a space at a break may go (it is the break)."""
        lines = wrap(text, width)
        assert all(columns(line) <= width for line in lines)
        assert _without_spaces("".join(lines)) == _without_spaces(text)
        assert len("".join(lines)) >= len(text) - (len(lines) - 1)

    @PROPERTY
    @given(
        text=st.text(st.sampled_from("ab \u98df\uff21c\u0301"), max_size=200),
        width=st.integers(2, 50),
    )
    def test_a_wide_character_takes_two_columns(self, text: str, width: int) -> None:
        """CJK ideographs and fullwidth forms take two columns: lines still fit."""
        lines = wrap(text, width)
        assert all(columns(line) <= width for line in lines)
        assert _without_spaces("".join(lines)) == _without_spaces(text)

    def test_eighty_ideographs_make_lines_of_42_columns(self) -> None:
        assert columns("\u98df" * 21) == WIDTH
        assert [columns(line) for line in wrap("\u98df" * 80)] == [42, 42, 42, 34]

    def test_a_combining_accent_takes_no_column(self) -> None:
        """e + U+0301 prints as é: one column, and it is not split from its letter."""
        text = "Cafe\u0301 " * 10
        lines = wrap(text.strip(), 10)
        assert lines[0] == "Cafe\u0301 Cafe\u0301"
        assert columns(lines[0]) == 9


class TestIssued:
    def test_a_replayed_receipt_without_item_lines_prints_its_vat_table(
        self, service: ReceiptService
    ) -> None:
        """The scenario replay's receipts (amounts, no items) carry the table, and the sum."""
        result = service.issue_special("KASSE-1", "standard", amounts=(0, 0, 1130, 0, 0))
        assert _rates(result.lines) == [
            "MwSt             Netto    Steuer    Brutto",
            "  C 13%          10,00      1,30     11,30",
        ]
        assert "SUMME EUR                            11,30" in result.lines

    def test_the_receipt_of_long_texts_carries_them_whole(self, service: ReceiptService) -> None:
        """Through the service and the ESC/POS renderer: nothing cut, nothing too wide."""
        cashier = "Maria-Theresia Walburga Amalia Christina von Habsburg-Lothringen, Schichtleitung"
        doc = sale(
            cashier=cashier,
            lines=[{"text": BREAD, "qty": "1", "unit_price": "4.20", "vat": "reduced1"}],
            payments=[{"method": "card", "amount": "4.20"}],
        )
        result = service.issue(doc)
        assert all(len(line) <= WIDTH for line in result.lines)
        text = " ".join(result.lines)
        assert _without_spaces(BREAD) in _without_spaces(text)
        assert _without_spaces(cashier) in _without_spaces(text)
        job = render_escpos(result)
        for line in result.lines:
            assert line.encode("cp858") + b"\n" in job

    def test_a_storno_prints_negated_quantities_and_stores_the_voided_lines(
        self, service: ReceiptService, query: Any
    ) -> None:
        """Only the paper changes: the Storno's document keeps the voided lines with their
        totals negated, and its signed amounts are minus the voided receipt's."""
        lines = [
            {"text": "Kaffee", "qty": "0.333", "unit_price": "3.00", "vat": "normal"},
            {"text": "Pfand", "qty": "-1", "unit_price": "0.50", "vat": "zero"},
        ]
        service.issue(sale(lines=lines, payments=[{"method": "cash", "amount": "0.50"}]))
        storno = service.issue(
            {"request_id": "s2", "register": "KASSE-1", "kind": "storno", "voids": 2}
        )
        assert _items(storno.lines) == [
            "  -0,333 x 3,00",
            "Kaffee                             -1,00 A",
            "Pfand                               0,50 D",
        ]
        (row,) = query("SELECT * FROM receipts WHERE number = 3")
        assert json.loads(row["document"])["lines"] == [
            ["Kaffee", "0.333", "3.00", "normal", -100],
            ["Pfand", "-1", "0.50", "zero", 50],
        ]
        assert (row["amount_normal"], row["amount_zero"]) == (-100, 50)
