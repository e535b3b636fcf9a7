"""What the paper says of closings, items and amounts, and what ``receipts show`` shows."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from agent.at_rksv import split_jws
from agent.clock import FrozenClock
from agent.printing._layout import Text, layout
from agent.receipt_text import WIDTH, TextFacts, columns, render_lines
from agent.receipts import ReceiptService
from factories import Run, expect

REGISTER = "KASSE-1"


class TestClosings:
    def test_a_monats_and_a_jahresbeleg_name_the_period_they_close(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """Caught up after the till was off, a Monatsbeleg is dated after its month: its
        paper says which month it closes; a Jahresbeleg says its year."""
        clock.set(dt.datetime(2026, 5, 2, 8, 0, tzinfo=dt.UTC))
        march, april = service.run_closings()
        assert (march.kind, march.issued_at[:10]) == ("monthly", "2026-05-02")
        assert march.lines[3:5] == ["*** MONATSBELEG ***", "Monat 2026-03"]
        assert april.lines[3:5] == ["*** MONATSBELEG ***", "Monat 2026-04"]
        clock.set(dt.datetime(2027, 1, 2, 8, 0, tzinfo=dt.UTC))
        *_, december = service.run_closings()
        assert december.kind == "yearly"
        assert december.lines[3:5] == ["*** JAHRESBELEG ***", "Jahr 2026"]
        assert "Jahr 2026" in [b.text for b in layout(december) if isinstance(b, Text)]

    def test_other_receipts_name_no_period(self, service: ReceiptService) -> None:
        null = service.issue_special(REGISTER, "null")
        assert not [line for line in null.lines if line.startswith(("Monat ", "Jahr "))]


def _sale(*lines: tuple[str, str, str, str], paid: str) -> dict[str, object]:
    return {
        "request_id": "cols",
        "register": REGISTER,
        "kind": "standard",
        "lines": [{"text": t, "qty": q, "unit_price": p, "vat": v} for t, q, p, v in lines],
        "payments": [{"method": "cash", "amount": paid}],
    }


class TestItems:
    def test_amounts_stay_flush_right_on_paper_and_in_the_text(
        self, service: ReceiptService
    ) -> None:
        """A wide character takes two columns on a screen and prints as one "?": the
        returned lines are aligned by the screen's columns, the paper by the printer's,
        and the amount ends at column 42 in both."""
        result = service.issue(
            _sale(
                ("Sake 日本酒", "1", "4.99", "normal"),
                ("Kaffee ☕ groß", "2", "1.50", "normal"),
                ("Brot", "1", "2.00", "reduced1"),
                paid="9.99",
            )
        )
        items = [line for line in result.lines if line.endswith((" A", " B"))]
        assert len(items) == 3
        assert all(columns(line) == WIDTH for line in items)
        paper = [b.text for b in layout(result) if isinstance(b, Text)]
        printed = [line for line in paper if line.endswith((" A", " B"))]
        assert printed == [
            f"{'Sake ???':<36}4,99 A",
            f"{'Kaffee ? groß':<36}3,00 A",
            f"{'Brot':<36}2,00 B",
        ]

    def test_quantities_and_prices_print_in_the_austrian_form(
        self, service: ReceiptService
    ) -> None:
        """A quantity "0.250" at "0012.50" prints as 0,250 x 12,50, and "2" at "1.5" as
        2 x 1,50; the signed amounts are the line totals as before."""
        result = service.issue(
            _sale(
                ("Wurst", "0.250", "0012.50", "normal"),
                ("Kaffee", "2", "1.5", "normal"),
                ("Brot", "1.0", "2.00", "reduced1"),
                paid="8.13",
            )
        )
        assert "  0,250 x 12,50" in result.lines
        assert "  2 x 1,50" in result.lines
        assert not [line for line in result.lines if "." in line.split(" x ")[0]]
        assert split_jws(result.jws)[0].amounts[:2] == ("6,13", "2,00")

    def test_a_quantity_loses_its_leading_zeros_and_keeps_its_decimals(self) -> None:
        facts = TextFacts(
            "KASSE-1",
            "2",
            "standard",
            "2026-03-02T11:00:00",
            "signed",
            (350 + 250, 0, 0, 0, 0),
            [("Äpfel", "007", "0.5", "normal", 350), ("Käse", "000.50", "5", "normal", 250)],
            [("cash", 600)],
        )
        lines = render_lines(facts)
        assert "  7 x 0,50" in lines
        assert "  0,50 x 5,00" in lines


def test_receipts_show_prints_its_codes_and_jws(run: Run, till: Path) -> None:
    """The help promises text lines, QR and OCR codes and the JWS: the plain output has
    each, labelled, as the JSON output does."""
    as_json = run("receipts", "show", REGISTER, "2", "--json", "--data-dir", till)
    receipt = json.loads(expect(as_json, 0).stdout)
    plain = expect(run("receipts", "show", REGISTER, "2", "--data-dir", till), 0).stdout
    for label, key in (("QR", "qr"), ("OCR", "ocr"), ("JWS", "jws")):
        assert f"  {label}: {receipt[key]}\n" in plain
    help_text = expect(run("receipts", "show", "--help"), 0).stdout
    assert "OCR" in help_text
