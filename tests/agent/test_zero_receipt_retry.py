"""A zero receipt asked with a request_id, retried after its Sammelbeleg's answer was lost
(agent/receipts.py ReceiptService.zero_receipt)."""

from __future__ import annotations

import pytest

from agent.errors import WaitsForUnit
from agent.fakes.chain_service import ChainServiceFake
from agent.receipts import ReceiptService
from factories import sale

REGISTER = "KASSE-1"


@pytest.fixture(name="service")
def _service(chain_service: ReceiptService) -> ReceiptService:
    return chain_service


def test_the_retry_after_recovery_answers_instead_of_waiting_for_good(
    service: ReceiptService, chain: ChainServiceFake
) -> None:
    """The Sammelbeleg asked for is sent, its answer lost (it waits: 503, the retry too
    while the outage is open); recovery issues a signed one and closes the outage; the
    retry then gets the receipt of its request_id (200), not 503 for good."""
    chain.mode = "down"
    assert service.issue(sale()).signature_state == "fallback"
    chain.mode = "lose_put_response"
    with pytest.raises(WaitsForUnit):
        service.zero_receipt(REGISTER, "z-1")
    with pytest.raises(WaitsForUnit):  # still open: the retry waits as well
        service.zero_receipt(REGISTER, "z-1")
    lost = service.get(REGISTER, 3)
    assert (lost.kind, lost.signature_state) == ("sammelbeleg", "unsigned")
    chain.mode = "up"
    recovered = service.recover(REGISTER) or []
    assert ("sammelbeleg", "signed") in [(r.kind, r.signature_state) for r in recovered]
    assert not service.outages.is_open(REGISTER)
    retry = service.zero_receipt(REGISTER, "z-1")
    assert not retry.created
    assert retry.result.number == 3


def test_a_null_sale_repeating_a_zero_receipt_request_gets_its_receipt(
    service: ReceiptService,
) -> None:
    """The POS asked the zero-receipt endpoint, then (answer lost) retries the same
    request_id as a ``kind: null`` sale, e.g. through the spool: the stored Nullbeleg, not
    ``request-id-reused`` (which it gets the other way round as well)."""
    asked = service.zero_receipt(REGISTER, "z-2")
    again = service.issue_once(
        {"request_id": "z-2", "register": REGISTER, "kind": "null", "lines": [], "payments": []}
    )
    assert (again.created, again.result.number) == (False, asked.result.number)
    assert again.result.kind == "null"
