"""What the paper says of closings."""

from __future__ import annotations

import datetime as dt

from agent.clock import FrozenClock
from agent.printing._layout import Text, layout
from agent.receipts import ReceiptService

REGISTER = "KASSE-1"


class TestClosings:
    def test_a_monats_and_a_jahresbeleg_name_the_period_they_close(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """Caught up after the till was off, a Monatsbeleg is dated after its month: its
        paper says which month it closes; a Jahresbeleg says its year."""
        clock.set(dt.datetime(2026, 5, 2, 8, 0, tzinfo=dt.UTC))
        march, april = service.run_closings()
        assert (march.kind, march.issued_at[:10]) == ("monthly", "2026-05-02")
        assert march.lines[3:5] == ["*** MONATSBELEG ***", "Monat 2026-03"]
        assert april.lines[3:5] == ["*** MONATSBELEG ***", "Monat 2026-04"]
        clock.set(dt.datetime(2027, 1, 2, 8, 0, tzinfo=dt.UTC))
        *_, december = service.run_closings()
        assert december.kind == "yearly"
        assert december.lines[3:5] == ["*** JAHRESBELEG ***", "Jahr 2026"]
        assert "Jahr 2026" in [b.text for b in layout(december) if isinstance(b, Text)]

    def test_other_receipts_name_no_period(self, service: ReceiptService) -> None:
        null = service.issue_special(REGISTER, "null")
        assert not [line for line in null.lines if line.startswith(("Monat ", "Jahr "))]
