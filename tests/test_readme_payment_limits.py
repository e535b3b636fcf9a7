"""The README's payments row gives the limits the contract enforces: 1-20 payments, a
method of 1-32 characters (held against the model, as tests/test_readme_contract.py does)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.contract import parse_sale
from agent.errors import InvalidSale
from factories import sale

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _payments_row() -> str:
    start = README.index("## What a POS sends")
    section = README[start : README.find("\n## ", start + 1)]
    rows: list[str] = re.findall(r"^\| `payments` \|.*$", section, re.MULTILINE)
    (row,) = rows
    return row


def _sale(count: int, method: str = "cash") -> dict[str, object]:
    line = {"text": "X", "qty": str(count), "unit_price": "1.00", "vat": "normal"}
    return sale(lines=[line], payments=[{"method": method, "amount": "1.00"}] * count)


def test_the_readme_gives_the_number_of_payments_the_contract_takes() -> None:
    (most,) = re.findall(r"1-(\d+) payments", _payments_row())
    parse_sale(_sale(int(most)))
    with pytest.raises(InvalidSale) as refused:
        parse_sale(_sale(int(most) + 1))
    assert (refused.value.field, refused.value.rule) == ("payments", "max-items")


def test_the_readme_gives_the_length_of_a_method_the_contract_takes() -> None:
    (most,) = re.findall(r"`method` \(1-(\d+) of `a-z0-9_-`", _payments_row())
    parse_sale(_sale(1, "m" * int(most)))
    with pytest.raises(InvalidSale) as refused:
        parse_sale(_sale(1, "m" * (int(most) + 1)))
    assert (refused.value.field, refused.value.rule) == ("payments.0.method", "max-length")
