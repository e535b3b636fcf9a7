"""A Storno whose payments are wrong is refused with both sums: what they add up to and
what they must add up to."""

from __future__ import annotations

import pytest

from agent.errors import InvalidSale
from agent.receipts import ReceiptService
from factories import sale

REGISTER = "KASSE-1"
SMALL = {
    "lines": [{"text": "Kaffee", "qty": "2", "unit_price": "3.20", "vat": "normal"}],
    "payments": [{"method": "cash", "amount": "6.40"}],
}


def _storno_paying(amount: str, request_id: str = "sto-1") -> dict[str, object]:
    return {
        "request_id": request_id,
        "register": REGISTER,
        "kind": "storno",
        "voids": 2,
        "payments": [{"method": "cash", "amount": amount}],
    }


@pytest.mark.parametrize(
    ("amount", "paid"), [("6.40", "6.40"), ("-0.05", "-0.05"), ("-64.00", "-64.00")]
)
def test_the_refusal_names_the_sum_sent_and_the_sum_expected(
    service: ReceiptService, amount: str, paid: str
) -> None:
    service.issue(sale(**SMALL))
    with pytest.raises(InvalidSale) as refused:
        service.issue(_storno_paying(amount))
    assert (refused.value.field, refused.value.rule) == ("payments", "sum-matches-lines")
    assert refused.value.message == (
        f"storno payments add up to {paid} but must add up to minus the voided total,"
        " -6.40 (receipt 2 totals 6.40), or be left out"
    )


def test_the_refused_storno_costs_nothing_and_the_right_one_goes_through(
    service: ReceiptService,
) -> None:
    service.issue(sale(**SMALL))
    with pytest.raises(InvalidSale):
        service.issue(_storno_paying("6.40"))
    storno = service.issue(_storno_paying("-6.40", request_id="sto-2"))
    assert (storno.number, storno.kind) == (3, "storno")
