"""A receipt that would take a 5-byte turnover counter beyond its limit is refused, and
says so: the limit in euros, the counter that still fits, and what still goes through."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from agent.errors import FiscalError
from agent.receipts import ReceiptService, RegisterSetup
from factories import sale

REGISTER = "K-5"
BILLION = "1000000000.00"
LIMIT = "5497558138.87"  # (2**39 - 1) cents: the largest a 5-byte counter holds


def _billion(request_id: str, sign: str = "") -> dict[str, Any]:
    return sale(
        request_id=request_id,
        register=REGISTER,
        lines=[{"text": "Yacht", "qty": f"{sign}1", "unit_price": BILLION, "vat": "normal"}],
        payments=[{"method": "card", "amount": f"{sign}{BILLION}"}],
    )


def _turnover(service: ReceiptService) -> tuple[int, int]:
    """The register's last number and turnover counter (cents), as stored."""
    conn = sqlite3.connect(service.db.path)
    try:
        row = conn.execute(
            "SELECT last_number, turnover_cents FROM registers WHERE id = ?", (REGISTER,)
        ).fetchone()
    finally:
        conn.close()
    return int(row[0]), int(row[1])


@pytest.fixture(name="five_billion")
def _five_billion(bare_service: ReceiptService) -> ReceiptService:
    """Register K-5 on a 5-byte counter that stands at 5,000,000,000.00 EUR (receipts 2-6)."""
    bare_service.init_register(RegisterSetup(REGISTER, ["dev"], counter_bytes=5))
    for n in range(5):
        bare_service.issue(_billion(f"y{n}"))
    return bare_service


def test_the_refusal_names_the_limit_and_says_the_counter_still_fits(
    five_billion: ReceiptService,
) -> None:
    with pytest.raises(FiscalError) as refused:
        five_billion.issue(_billion("y5"))
    assert str(refused.value) == (
        f"register {REGISTER}: this receipt would take the turnover counter to 6000000000.00"
        f" EUR, beyond the largest turnover its 5 bytes hold, {LIMIT} EUR; it is refused and"
        " used no number. The counter stands at 5000000000.00 EUR and still fits: receipts"
        " that keep it within the limit (smaller or negative sales, the Storno of a sale) go"
        " through. To go beyond it, close the register (Schlussbeleg) and start a new one on"
        " 8 counter bytes"
    )
    assert _turnover(five_billion) == (6, 500_000_000_000)


def test_after_the_refusal_a_negative_sale_and_a_smaller_one_go_through(
    five_billion: ReceiptService,
) -> None:
    with pytest.raises(FiscalError):
        five_billion.issue(_billion("y5"))
    assert five_billion.issue(_billion("refund", sign="-")).number == 7
    assert five_billion.issue(_billion("y6")).number == 8
    assert _turnover(five_billion) == (8, 500_000_000_000)


def test_a_storno_cannot_take_the_counter_beyond_its_limit(
    five_billion: ReceiptService,
) -> None:
    """The Storno of a negative sale adds to the counter, though its field is the STO
    marker: taken beyond the limit, the counter would refuse every later receipt, even
    the Nullbeleg and the Schlussbeleg that closes the register."""
    refund = five_billion.issue(_billion("refund", sign="-")).number  # 4,000,000,000.00
    five_billion.issue(_billion("y5"))  # 5,000,000,000.00 again
    storno = {"request_id": "sto", "register": REGISTER, "kind": "storno", "voids": refund}
    with pytest.raises(FiscalError, match=f"to 6000000000.00 EUR, beyond .* {LIMIT} EUR"):
        five_billion.issue(storno)
    assert _turnover(five_billion) == (8, 500_000_000_000)
    assert five_billion.issue_special(REGISTER, "null").number == 9
