"""An outage opened in the running process before the watch's first tick ages by the boot
clock, as one opened after a tick does: a wall clock stepped forward by NTP soon after the
boot does not make a 30-second outage three days old (DESIGN.md invariant 4)."""

from __future__ import annotations

import pytest

from agent.clock import FrozenClock
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from factories import journal_events, sale, the_outage

HOUR = 3600.0


class TestOpenedBeforeTheFirstTick:
    def test_a_forward_step_before_the_first_tick_adds_nothing(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """The outage opens, 30 s later NTP steps the wall clock +3 days, then the first
        tick: the outage is 30 s old, no level past ``opened`` fires, no report falls due;
        the step is journaled (on the next tick, which has one to compare with)."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        clock.advance(30)
        clock.jump(72 * HOUR)
        assert service.outages.watch.tick() == []
        outage = the_outage(service)
        assert outage.age_seconds == pytest.approx(30)
        assert outage.escalations == ("opened",)
        assert outage.report_due is None
        clock.advance(30)
        service.outages.watch.tick()
        assert the_outage(service).age_seconds == pytest.approx(60)

    def test_a_backward_step_before_the_first_tick_gives_no_negative_age(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """The wall clock set back 5 h before the first tick: the outage does not get younger
        than new, and the step back (since the outage's last check) is journaled once."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        clock.advance(30)
        clock.jump(-5 * HOUR)
        service.outages.watch.tick()
        assert the_outage(service).age_seconds == pytest.approx(0)
        [jump] = journal_events(service.db, "clock.jump")
        assert float(jump["delta_seconds"]) == pytest.approx(-5 * HOUR + 30)

    def test_it_still_reaches_the_window_by_the_boot_clock(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """The same outage, 48 real hours later, is past the window: the cap takes only what
        the wall clock added, not the time that passed."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        clock.advance(30)
        clock.jump(72 * HOUR)
        for _ in range(48):
            clock.advance(HOUR)
            service.outages.watch.tick()
        outage = the_outage(service)
        assert outage.age_seconds == pytest.approx(48 * HOUR + 30)
        assert outage.escalations == ("opened", "24h", "approaching", "exceeded")
