"""The README's promises about the sale contract and the local API, held against the code."""

from __future__ import annotations

import re
from pathlib import Path

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
