"""A retry is recognised by the amounts of its money, not their spelling ("12.5" is
"12.50"); fingerprints stored by an earlier version still find their receipts; a refused
retry names the receipt its request_id has; a zero receipt's request_id repeated with
other content is refused (agent/contract.py sale_fingerprint, agent/receipts.py)."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from agent import receipts
from agent.contract import Sale
from agent.errors import InvalidSale
from agent.receipts import ReceiptService
from factories import sale

Query = Callable[..., list[sqlite3.Row]]
REGISTER = "KASSE-1"


def _one(price: str, amount: str, qty: str = "1") -> dict[str, Any]:
    return sale(
        lines=[{"text": "Schnitzel", "qty": qty, "unit_price": price, "vat": "normal"}],
        payments=[{"method": "cash", "amount": amount}],
    )


def _s2(parsed: Sale) -> str:
    """The fingerprint as the version before this one stored it: money as sent."""
    lines = "\x1e".join(f"{x.text}\x1f{x.qty}\x1f{x.unit_price}\x1f{x.vat}" for x in parsed.lines)
    payments = "\x1e".join(f"{p.method}\x1f{p.amount}" for p in parsed.payments)
    voids = "" if parsed.voids is None else str(parsed.voids)
    material = "\x1d".join(
        (
            parsed.request_id,
            parsed.register_id,
            parsed.kind,
            voids,
            parsed.cashier or "",
            lines,
            payments,
        )
    )
    digest = hashlib.sha256(material.encode("utf-8")).digest()
    return "s2:" + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@pytest.mark.parametrize(
    ("first", "again"),
    [
        (("12.50", "12.50"), ("12.5", "12.50")),
        (("12.50", "12.50"), ("0012.50", "12.50")),
        (("12.50", "12.50"), ("12.50", "12.5")),
        (("12.50", "12.50"), ("12.5", "0012.5")),
        (("-3.00", "-3.00"), ("-3", "-3.0")),
        (("0.00", "0.00"), ("-0", "0")),
    ],
)
def test_the_same_amounts_spelt_otherwise_are_a_repeat(
    service: ReceiptService, query: Query, first: tuple[str, str], again: tuple[str, str]
) -> None:
    issued = service.issue(_one(*first))
    repeat = service.issue_once(_one(*again))
    assert (repeat.created, repeat.result) == (False, issued)
    assert query("SELECT count(*) AS n FROM receipts")[0]["n"] == 2


def test_another_amount_or_quantity_spelling_is_still_another_sale(
    service: ReceiptService,
) -> None:
    """Quantities print as sent ("1.0" is not "1" on the receipt): they count as sent."""
    service.issue(_one("12.50", "12.50"))
    for other in (_one("12.50", "12.50", qty="1.0"), _one("12.51", "12.51")):
        with pytest.raises(InvalidSale) as refused:
            service.issue(other)
        assert refused.value.rule == "request-id-reused"


def test_a_sale_stored_with_the_earlier_fingerprint_is_still_recognised(
    service: ReceiptService, query: Query, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored "s2:" (money as sent) before the upgrade: its retry as sent gets its
    receipt; a different sale is refused."""
    with monkeypatch.context() as patch:
        patch.setattr(receipts, "sale_fingerprint", _s2)
        first = service.issue(_one("12.50", "12.50"))
    [row] = query("SELECT sale_hash FROM receipts WHERE number = ?", first.number)
    assert row["sale_hash"].startswith("s2:")
    repeat = service.issue_once(_one("12.50", "12.50"))
    assert (repeat.created, repeat.result) == (False, first)
    with pytest.raises(InvalidSale) as refused:
        service.issue(_one("12.50", "12.50") | {"cashier": "Eva"})
    assert refused.value.rule == "request-id-reused"


def test_new_receipts_store_the_amount_fingerprint(service: ReceiptService, query: Query) -> None:
    first = service.issue(_one("12.5", "12.5"))
    [row] = query("SELECT sale_hash FROM receipts WHERE number = ?", first.number)
    assert row["sale_hash"].startswith("s3:")


def test_a_refused_retry_names_the_receipt_of_its_request_id(service: ReceiptService) -> None:
    first = service.issue(sale())
    with pytest.raises(InvalidSale) as refused:
        service.issue(sale(cashier="Eva"))
    message = refused.value.message
    assert f"receipt {first.number} of register {REGISTER}" in message
    assert f'(receipt_id "{first.receipt_id}")' in message


def test_a_null_sale_with_a_cashier_does_not_repeat_a_zero_receipt(
    service: ReceiptService,
) -> None:
    """The zero-receipt endpoint carries only the request_id: a null sale with a cashier
    under its request_id is another request (409), a bare null sale its retry."""
    asked = service.zero_receipt(REGISTER, "z-1")
    null = {"request_id": "z-1", "register": REGISTER, "kind": "null"}
    with pytest.raises(InvalidSale) as refused:
        service.issue(null | {"cashier": "Mallory"})
    assert refused.value.rule == "request-id-reused"
    assert f"receipt {asked.result.number} of register" in refused.value.message
    again = service.issue_once(null)
    assert (again.created, again.result.number) == (False, asked.result.number)


def test_a_zero_receipt_does_not_repeat_a_null_sale_with_a_cashier(
    service: ReceiptService,
) -> None:
    """The other way round: the endpoint's request names a null sale that carried a
    cashier: another request (409); a bare null sale's request_id gets its receipt."""
    service.issue({"request_id": "n-1", "register": REGISTER, "kind": "null", "cashier": "Anna"})
    with pytest.raises(InvalidSale) as refused:
        service.zero_receipt(REGISTER, "n-1")
    assert refused.value.rule == "request-id-reused"
    bare = service.issue({"request_id": "n-2", "register": REGISTER, "kind": "null"})
    again = service.zero_receipt(REGISTER, "n-2")
    assert (again.created, again.result.number) == (False, bare.number)


def test_a_zero_receipt_retry_outside_any_outage_reads_no_journal(
    service: ReceiptService,
) -> None:
    """Which outage a remedy's Nullbeleg was stored in is looked up in the journal, which
    has no index to find it by; a retry of a zero receipt no outage is open around (the
    usual one) must not read it: a till's journal holds millions of events."""
    asked = service.zero_receipt(REGISTER, "z-1")
    statements: list[str] = []
    conn = service.db.write_connection()._conn
    conn.set_trace_callback(statements.append)
    try:
        again = service.zero_receipt(REGISTER, "z-1")
        repeated = service.issue_once({"request_id": "z-1", "register": REGISTER, "kind": "null"})
    finally:
        conn.set_trace_callback(None)
    assert again.result.number == repeated.result.number == asked.result.number
    assert statements  # (the trace saw the retries)
    assert not [s for s in statements if "FROM journal" in s]
