"""Suspend counts: the 48-hour window is real time, and a machine that sleeps through it
has an outage as old as the hours it slept (reference/rksv.md section 5), while a change
of the wall clock still neither fakes nor swallows an escalation."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from agent.clock import FrozenClock, SystemClock
from agent.outage_watch import OutageWatch
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from factories import journal_events, sale

HOUR = 3600.0


class TestSuspend:
    def test_hours_of_suspend_age_the_outage(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock, watch: OutageWatch
    ) -> None:
        """50 h asleep: past the window at the first tick after waking, and no clock jump."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        watch.tick()
        clock.suspend(50 * HOUR)
        clock.advance(60)
        fired = [level for _, level in watch.tick()]
        assert fired == ["24h", "approaching", "exceeded"]
        assert journal_events(service.db, "clock.jump") == []
        [escalation] = [
            e for e in journal_events(service.db, "outage.escalation") if e["level"] == "exceeded"
        ]
        assert float(str(escalation["age_hours"])) == pytest.approx(50 + 1 / 60, abs=0.01)

    def test_a_wall_clock_jump_during_suspend_is_still_a_jump(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock, watch: OutageWatch
    ) -> None:
        """1 h asleep, then the wall clock set 3 days ahead: the age is 1 h, the jump journaled."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        watch.tick()
        clock.suspend(HOUR)
        clock.jump(72 * HOUR)
        assert watch.tick() == []
        [jump] = journal_events(service.db, "clock.jump")
        assert float(str(jump["delta_seconds"])) == pytest.approx(72 * HOUR)


class TestClocks:
    def test_the_frozen_clock_sleeps_without_its_monotonic_clock(self) -> None:
        """``suspend`` moves the wall and boot clocks, ``jump`` only the wall clock."""
        clock = FrozenClock(dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
        start = (clock.now(), clock.monotonic(), clock.boottime())
        clock.suspend(10)
        clock.jump(5)
        assert (clock.now() - start[0]).total_seconds() == 15
        assert clock.monotonic() == start[1]
        assert clock.boottime() == start[2] + 10

    @pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="Linux only")
    def test_the_system_clock_counts_boot_time(self) -> None:
        """On Linux the boot clock is CLOCK_BOOTTIME (it includes suspend)."""
        before = time.clock_gettime(time.CLOCK_BOOTTIME)
        value = SystemClock().boottime()
        assert before <= value <= time.clock_gettime(time.CLOCK_BOOTTIME)
