"""The README's promises about the sale contract and the local API, held against the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.api import ErrorOut
from agent.contract import parse_sale
from agent.errors import InvalidSale
from agent.receipts import ReceiptService, RegisterSetup
from factories import sale

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def _row(field: str) -> str:
    """The README's row of the sale contract's table for ``field``."""
    (row,) = re.findall(rf"^\| `{field}` \|.*$", _section("What a POS sends"), re.MULTILINE)
    return row


class TestRequestId:
    def test_the_key_is_per_register_as_the_readme_says(self, service: ReceiptService) -> None:
        """The same request_id on another register is that register's own sale: a receipt
        of its own; the README says the key is unique per register, not per till."""
        service.init_register(RegisterSetup("KASSE-2", ["dev"]))
        first = service.issue(sale())
        other = service.issue(sale(register="KASSE-2"))
        assert (first.register_id, other.register_id, other.number) == ("KASSE-1", "KASSE-2", 2)
        row = _row("request_id")
        assert "unique per register" in row
        assert "same register" in row


class TestErrorBodies:
    def test_the_example_of_a_rejected_sale_is_the_real_body(self) -> None:
        """The README's error is exactly what the API and the spool's error file carry
        (``{field, rule, message}``) for the sale it describes."""
        section = _section("What a POS sends")
        block = section[section.index("A rejected sale gets an error") :]
        example = json.loads(
            block[block.index("```json") + 7 : block.index("```", block.index("```json") + 7)]
        )
        doc = sale()
        doc["lines"][0]["unit_price"] = 12.5
        with pytest.raises(InvalidSale) as refused:
            parse_sale(doc)
        assert example == refused.value.as_dict()  # the spool's error file
        assert list(example) == list(ErrorOut.model_fields)  # the API's body

    def test_the_zero_receipt_of_an_unknown_register_is_described(self) -> None:
        """The README names the 404 an unknown register's zero receipt gets."""
        api = " ".join(_section("Feeding sales").split())
        assert '404 `{"field": "register", "rule": "register-unknown"' in api
