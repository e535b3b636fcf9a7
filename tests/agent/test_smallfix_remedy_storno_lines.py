"""The remedy's Storno of a lost receipt is stored as a POS Storno of the same sale is:
its lines keep the quantity and unit price as sold with the total negated (the printed
text shows the quantity negated, from the total's sign), so ``receipts show``, the API's
result, a reprint and the journal say the same of both; the DEP still verifies."""

from __future__ import annotations

import io
import json
from typing import Any

from agent.at_rksv.verify import verify_dep
from agent.export import export_container, export_dep
from agent.fakes.chain_service import ChainServiceFake
from agent.receipts import ReceiptService
from factories import db_rows, journal_events, sale

REGISTER = "KASSE-1"


def _document(service: ReceiptService, number: int) -> dict[str, Any]:
    [row] = db_rows(
        service.db,
        "SELECT document FROM receipts WHERE register_id = ? AND number = ?",
        REGISTER,
        number,
    )
    return dict(json.loads(row["document"]))


def _items(text: list[str]) -> list[str]:
    """The item lines of a receipt's text: between the first two rules."""
    start = text.index("-" * 42) + 1
    return text[start : text.index("-" * 42, start)]


def test_the_remedys_storno_is_stored_as_a_pos_storno(
    chain_service: ReceiptService, chain: ChainServiceFake
) -> None:
    service = chain_service
    voided = service.issue(sale(request_id="a"))
    pos = service.issue(
        {"request_id": "s", "register": REGISTER, "kind": "storno", "voids": voided.number}
    )
    chain.mode = "lose_request"
    assert service.issue(sale(request_id="b")).signature_state == "unsigned"
    chain.mode = "up"
    issued = service.recover(REGISTER)
    assert issued is not None
    remedy = next(r for r in issued if r.kind == "storno")
    by_pos, by_remedy = _document(service, pos.number), _document(service, remedy.number)
    assert by_remedy["lines"] == by_pos["lines"]
    assert by_pos["lines"] == [
        ["Schnitzel", "1", "12.50", "normal", -1250],
        ["Apfelsaft", "2", "2.10", "reduced1", -420],
    ]
    assert _items(by_remedy["text"]) == _items(by_pos["text"])
    assert "  -2 x 2,10" in _items(by_remedy["text"])
    assert remedy.lines == by_remedy["text"]  # the result the API and a reprint show
    events = {e["number"]: e for e in journal_events(service.db, "receipt.issued")}
    assert events[remedy.number]["lines"] == events[pos.number]["lines"]
    buffer = io.StringIO()
    export_dep(service.db, REGISTER, buffer)
    container = json.loads(export_container(service.db, REGISTER))
    assert verify_dep(json.loads(buffer.getvalue()), container).findings == []
