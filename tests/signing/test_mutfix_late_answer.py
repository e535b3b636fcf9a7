"""A local unit that answers after the deadline, with a valid signature, counts as down.

Nothing remembers a local unit's late signature, and a till must never wait for timeouts
receipt after receipt (DESIGN.md, signing): :func:`agent.signing.sign_verified` drops the
late answer, the sale falls back and opens the outage, and the next sale falls back at
once. A ``slow`` :class:`~agent.signing.flaky.FlakyUnit` gives up by itself at the
deadline; only a ``late`` one, which really answers late, reaches that check.
"""

from __future__ import annotations

import time

from agent.clock import FrozenClock
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import sale, the_outage
from storage import TillDB

REGISTER = "KASSE-1"  # tests/conftest.py
UNIT = "dev"
LATE = 0.3  # seconds the unit takes to answer
DEADLINE = 0.05  # the service's sign_timeout


def _timed_sale(service: ReceiptService, request_id: str) -> tuple[str, float]:
    started = time.monotonic()
    state = service.issue(sale(request_id=request_id)).signature_state
    return state, time.monotonic() - started


def test_a_late_but_valid_answer_falls_back_and_opens_the_outage(
    db: TillDB, registry: UnitRegistry, clock: FrozenClock, service: ReceiptService
) -> None:
    """The sale that met the late answer is a fallback receipt and opens the outage; the
    next sale falls back without asking the unit, so without waiting for it."""
    with db.write_connection().transaction() as conn:
        late = FlakyUnit(registry.get(conn, UNIT), "late", LATE)
    registry.put(late)
    hasty = ReceiptService(db, registry, clock=clock, sign_timeout=DEADLINE)

    state, took = _timed_sale(hasty, "late")
    assert (state, late.calls) == ("fallback", 1)
    assert took >= LATE  # the unit was asked and did answer: late
    assert hasty.outages.is_open(REGISTER)
    outage = the_outage(hasty)
    assert (outage.first_number, outage.affected) == (2, 1)
    assert "after the deadline" in outage.cause

    state, took = _timed_sale(hasty, "next")
    assert (state, late.calls) == ("fallback", 1)
    assert took < LATE
