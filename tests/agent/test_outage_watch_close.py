"""An outage is aged when its Sammelbeleg closes it, not only by the timer (DESIGN.md
invariant 4, reference/rksv.md section 5): past 48 h it must be reported within a week,
and its end too, even if no tick saw it (``till-agent outage recover`` after days)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3

import pytest

from agent.clock import FrozenClock
from agent.outage_watch import OutageWatch, Thresholds
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import sale, the_outage
from storage import TillDB

REGISTER = "KASSE-1"
HOUR = 3600.0


def _levels(service: ReceiptService) -> list[str]:
    conn = sqlite3.connect(service.db.path)
    try:
        rows = conn.execute(
            "SELECT data FROM journal WHERE kind = 'outage.escalation' ORDER BY seq"
        )
        return [json.loads(r[0])["level"] for r in rows]
    finally:
        conn.close()


def _outage_for(
    service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock, hours: float
) -> dt.datetime:
    """One fallback receipt, ``hours`` without any tick, then the unit signs again and
    ``recover`` issues the Sammelbeleg; returns when the outage started."""
    flaky.mode = "down"
    assert service.issue(sale(request_id="r-1")).signature_state == "fallback"
    start = clock.now()
    clock.advance(hours * HOUR)
    flaky.mode = "up"
    assert [r.kind for r in service.recover(REGISTER) or []] == ["sammelbeleg"]
    return start


class TestClosingAgesTheOutage:
    def test_an_outage_past_48_hours_is_flagged_when_it_closes_without_a_tick(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """72 h with the agent stopped, then recover: exceeded, and the report is due a week
        after the 48 hours were over (start + 9 days); its end report a week after the end."""
        start = _outage_for(service, flaky, clock, 72)
        outage = the_outage(service)
        assert outage.ended_at is not None
        # only what has a legal consequence: warnings about an outage that is over warn nobody
        assert outage.escalations == ("opened", "exceeded", "end-report")
        assert outage.report_due == (start + dt.timedelta(days=9)).isoformat()
        assert outage.end_report_due == (start + dt.timedelta(hours=72, days=7)).isoformat()
        assert outage.age_seconds == pytest.approx(72 * HOUR)
        assert _levels(service) == ["opened", "exceeded", "end-report"]

    def test_the_close_asks_for_the_end_report_in_the_log(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The closed line at WARNING, then the exceeded line (report date) and the end
        report's line (its date, with --end)."""
        caplog.set_level(logging.INFO)
        _outage_for(service, flaky, clock, 72)
        lines = [(r.levelno, r.getMessage()) for r in caplog.records]
        closed = [i for i, (_, m) in enumerate(lines) if "closed" in m][-1]
        assert lines[closed][0] == logging.WARNING
        exceeded, end = lines[closed + 1 :]
        assert exceeded[0] == logging.ERROR
        assert "report it in FinanzOnline by 2026-03-11" in exceeded[1]
        assert end[0] == logging.WARNING
        assert "report its end (Wiederinbetriebnahme) in FinanzOnline by 2026-03-12" in end[1]
        assert "outage report 1 --end" in end[1]

    def test_a_shorter_outage_is_not_flagged(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """47 h: the levels it reached, but no report is due."""
        _outage_for(service, flaky, clock, 47)
        outage = the_outage(service)
        assert "exceeded" not in outage.escalations
        assert outage.report_due is None

    def test_a_level_the_timer_recorded_is_not_recorded_again(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """The timer saw 49 h; closing at 50 h adds only the end report and keeps the
        report date."""
        watch = service.outages.watch
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        for _ in range(49):
            clock.advance(HOUR)
            watch.tick()
        before = the_outage(service)
        clock.advance(HOUR)
        flaky.mode = "up"
        service.recover(REGISTER)
        after = the_outage(service)
        assert after.escalations == (*before.escalations, "end-report")
        assert after.report_due == before.report_due
        assert _levels(service) == ["opened", "24h", "approaching", "exceeded", "end-report"]

    def test_the_watch_is_built_on_the_receipt_services_clock(
        self, db: TillDB, registry: UnitRegistry, clock: FrozenClock
    ) -> None:
        """As `outage recover` builds the service (no running agent): its watch ages by the
        service's clock and writes through the service's writer, so it can tick too."""
        service = ReceiptService(db, registry, clock=clock)
        assert service.outages.watch.clock is clock
        assert service.outages.watch.tick() == []

    def test_the_running_watch_closes_with_its_own_thresholds(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """The agent's configured (stricter) window applies to the close as well."""
        service.outages.watch = OutageWatch(
            service.db.write_connection(),
            clock,
            Thresholds(warn_hours=1, approaching_hours=2, exceeded_hours=3),
        )
        _outage_for(service, flaky, clock, 4)
        outage = the_outage(service)
        assert "exceeded" in outage.escalations
