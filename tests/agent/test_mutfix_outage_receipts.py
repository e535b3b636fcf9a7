"""The journal tells every receipt an open outage covers (DESIGN.md invariant 4).

The receipt that meets the failure opens the outage (``outage.opened`` names it as the
first number); each later fallback receipt of the same outage changes its record
(``affected``, ``last_number``), and every change to the record is a journal event, the one
that goes remote: ``outage.receipt``.
"""

from __future__ import annotations

from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from factories import db_rows, journal_events, sale, the_outage

REGISTER = "KASSE-1"


class TestOutageReceiptEvents:
    def test_each_fallback_receipt_after_the_first_is_journaled_with_its_outage(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """Four sales with the unit down: the first opens the outage, the three after it
        are one ``outage.receipt`` each, naming the outage and the receipt, and the events
        agree with the outage row."""
        flaky.mode = "down"
        results = [service.issue(sale(request_id=f"r-{n}")) for n in range(4)]
        assert [r.signature_state for r in results] == ["fallback"] * 4
        numbers = [r.number for r in results]
        assert numbers == [2, 3, 4, 5]  # after the Startbeleg

        outage = the_outage(service)
        [opened] = journal_events(service.db, "outage.opened")
        events = journal_events(service.db, "outage.receipt")
        assert opened["first_number"] == numbers[0]
        assert events == [{"outage": outage.id, "number": n} for n in numbers[1:]]
        assert (outage.first_number, outage.last_number) == (numbers[0], events[-1]["number"])
        assert outage.affected == 1 + len(events)
        registers = db_rows(
            service.db, "SELECT DISTINCT register_id FROM journal WHERE kind = 'outage.receipt'"
        )
        assert [r["register_id"] for r in registers] == [REGISTER]
