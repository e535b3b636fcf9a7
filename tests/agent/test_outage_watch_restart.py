"""The off-time of an outage found open at a start is measured by the wall clock; when that
clock turns out to have been behind (NTP steps it forward later, while the agent runs), the
step is added to that outage's age: a 60-hour outage does not close as a 30-hour one
(DESIGN.md invariant 4, reference/rksv.md section 5). Outages opened in the running process
age by the boot clock only, and a jump fakes nothing for them."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.clock import FrozenClock
from agent.evidence import outage_evidence, render_evidence
from agent.outage_watch import OutageWatch
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import journal_events, sale, the_outage

REGISTER = "KASSE-1"
HOUR = 3600.0


def _run(service: ReceiptService, clock: FrozenClock, hours: int) -> None:
    for _ in range(hours):
        clock.advance(HOUR)
        service.outages.watch.tick()


def _restart(service: ReceiptService, registry: UnitRegistry, wall: dt.datetime) -> ReceiptService:
    """The till boots again with its wall clock at ``wall`` (a fresh boot clock)."""
    return ReceiptService(service.db, registry, clock=FrozenClock(wall))


def _off_and_behind(
    service: ReceiptService, registry: UnitRegistry, flaky: FlakyUnit, clock: FrozenClock
) -> tuple[ReceiptService, FrozenClock, dt.datetime]:
    """An outage opens, the agent runs 10 h, the till is off 30 h and boots with the wall
    clock at its shutdown time (no RTC, NTP not reachable yet); returns the restarted
    service, its clock, and when the outage started."""
    flaky.mode = "down"
    service.issue(sale(request_id="r-1"))
    start = clock.now()
    _run(service, clock, 10)
    restarted = _restart(service, registry, clock.now())
    restarted.outages.watch.tick()
    return restarted, restarted.outages.watch.clock, start  # type: ignore[return-value]


def _close_and_fail(watch: OutageWatch, at: dt.datetime) -> None:
    """Age outage 1 for its close in a transaction that then rolls back."""
    with watch.writer.transaction() as conn:
        watch.age_for_close(conn, 1, at)
        raise RuntimeError("rolled back")


class TestAClockBehindAtTheRestart:
    def test_the_ntp_step_is_added_to_the_off_time(
        self, service: ReceiptService, registry: UnitRegistry, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """5 minutes after the restart NTP steps the clock +30 h; 20 h later the unit is back:
        the outage lasted 60 h, past the window, reported a week after its 48th hour; the
        clock.jump event says what it added to the outage."""
        restarted, clock2, start = _off_and_behind(service, registry, flaky, clock)
        clock2.advance(300)
        clock2.jump(30 * HOUR)
        _run(restarted, clock2, 20)
        flaky.mode = "up"
        assert [r.kind for r in restarted.recover(REGISTER) or []] == ["sammelbeleg"]
        outage = the_outage(restarted)
        assert outage.age_seconds == pytest.approx(60 * HOUR + 300)
        assert "exceeded" in outage.escalations
        assert outage.report_due == (start + dt.timedelta(hours=48, days=7)).isoformat()
        [jump] = journal_events(service.db, "clock.jump")
        assert jump["delta_seconds"] == pytest.approx(30 * HOUR)
        assert jump["outages_aged"] == [{"outage": 1, "added_seconds": 30 * HOUR}]
        with service.db.read_connection() as conn:
            text = render_evidence(outage_evidence(conn, 1))
        assert "added to the age of outage 1 +108000 s" in text  # the pack for the office

    def test_a_step_just_before_the_close_counts_too(
        self, service: ReceiptService, registry: UnitRegistry, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """The unit is back before the next tick saw the step: the Sammelbeleg's close adds
        it and journals the jump (for its register, once: the next tick does not repeat it)."""
        restarted, clock2, start = _off_and_behind(service, registry, flaky, clock)
        _run(restarted, clock2, 20)
        clock2.jump(30 * HOUR)
        clock2.advance(60)
        flaky.mode = "up"
        assert [r.kind for r in restarted.recover(REGISTER) or []] == ["sammelbeleg"]
        outage = the_outage(restarted)
        assert outage.age_seconds == pytest.approx(60 * HOUR + 60)
        assert "exceeded" in outage.escalations
        assert outage.report_due == (start + dt.timedelta(hours=48, days=7)).isoformat()
        restarted.outages.watch.tick()
        [jump] = journal_events(service.db, "clock.jump")
        assert jump["delta_seconds"] == pytest.approx(30 * HOUR)
        assert jump["outages_aged"] == [{"outage": 1, "added_seconds": 30 * HOUR}]

    def test_a_clock_set_back_then_forward_again_adds_nothing(
        self, service: ReceiptService, registry: UnitRegistry, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """After the restart the clock is set back 5 h by hand, then forward 5 h: on balance
        it was not behind when the off-time was measured."""
        restarted, clock2, _ = _off_and_behind(service, registry, flaky, clock)
        for delta in (-5 * HOUR, 5 * HOUR):
            clock2.advance(60)
            clock2.jump(delta)
            restarted.outages.watch.tick()
        assert the_outage(restarted).age_seconds == pytest.approx(10 * HOUR + 120)
        assert all("outages_aged" not in j for j in journal_events(service.db, "clock.jump"))

    def test_a_clock_far_behind_counts_the_off_time_once_corrected(
        self, service: ReceiptService, registry: UnitRegistry, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """The till boots with its clock 2 days before the outage's last check (an RTC
        battery); NTP steps it +2 days and 30 h: the off-time is 30 h, not 0 and not 78 h."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        _run(service, clock, 10)
        restarted = _restart(service, registry, clock.now() - dt.timedelta(days=2))
        restarted.outages.watch.tick()
        clock2 = restarted.outages.watch.clock
        assert isinstance(clock2, FrozenClock)
        clock2.advance(60)
        clock2.jump(48 * HOUR + 30 * HOUR)
        restarted.outages.watch.tick()
        assert the_outage(restarted).age_seconds == pytest.approx(40 * HOUR + 60)
        jumps = journal_events(service.db, "clock.jump")
        assert [j.get("outages_aged") for j in jumps] == [
            None,  # set back at the restart, journaled at its first look
            [{"outage": 1, "added_seconds": 30 * HOUR}],
        ]

    def test_a_close_that_rolls_back_leaves_the_step_to_the_next_tick(
        self, service: ReceiptService, registry: UnitRegistry, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """The Sammelbeleg's transaction fails after the close aged the outage: its
        clock.jump is gone with it, so the next tick journals the step and adds it."""
        restarted, clock2, _ = _off_and_behind(service, registry, flaky, clock)
        _run(restarted, clock2, 20)
        clock2.jump(30 * HOUR)
        watch = restarted.outages.watch
        with pytest.raises(RuntimeError, match="rolled back"):
            _close_and_fail(watch, clock2.now())
        clock2.advance(60)
        watch.tick()
        assert the_outage(restarted).age_seconds == pytest.approx(60 * HOUR + 60)
        [jump] = journal_events(service.db, "clock.jump")
        assert jump["when"] == "while running"
        assert jump["outages_aged"] == [{"outage": 1, "added_seconds": 30 * HOUR}]


class TestOpenedInThisProcess:
    @pytest.mark.parametrize("then", ["tick", "recover"])
    def test_an_outage_opened_after_the_restart_gets_nothing_from_a_step(
        self,
        service: ReceiptService,
        registry: UnitRegistry,
        flaky: FlakyUnit,
        clock: FrozenClock,
        then: str,
    ) -> None:
        """Restarted with a clock 30 h behind; an outage opens before the first tick and NTP
        steps the clock +30 h a minute later: the outage is a minute old."""
        restarted = _restart(service, registry, clock.now())
        clock2 = restarted.outages.watch.clock
        assert isinstance(clock2, FrozenClock)
        flaky.mode = "down"
        restarted.issue(sale(request_id="r-1"))
        clock2.advance(30)
        restarted.outages.watch.tick()
        clock2.advance(30)
        clock2.jump(30 * HOUR)
        if then == "tick":
            restarted.outages.watch.tick()
        else:
            flaky.mode = "up"
            assert [r.kind for r in restarted.recover(REGISTER) or []] == ["sammelbeleg"]
        outage = the_outage(restarted)
        assert outage.age_seconds == pytest.approx(60)
        assert outage.escalations == ("opened",)
        assert all("outages_aged" not in j for j in journal_events(service.db, "clock.jump"))
