"""The watch sees the wall clock whether or not an outage is open: jumps are journaled and
logged, and a register whose receipts keep a date ahead of the clock is logged once."""

from __future__ import annotations

import json
import logging
import sqlite3

import pytest

from agent.clock import FrozenClock
from agent.outage_watch import OutageWatch
from agent.receipts import ReceiptService
from factories import sale

HOUR = 3600.0


def _events(service: ReceiptService, kind: str) -> list[tuple[str | None, dict[str, object]]]:
    conn = sqlite3.connect(service.db.path)
    try:
        rows = conn.execute(
            "SELECT register_id, data FROM journal WHERE kind = ? ORDER BY seq", (kind,)
        )
        return [(r[0], json.loads(r[1])) for r in rows]
    finally:
        conn.close()


def _messages(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


class TestClockJumps:
    @pytest.mark.parametrize("hours", [5, -5])
    def test_a_jump_without_an_outage_is_journaled_and_logged(
        self,
        service: ReceiptService,
        clock: FrozenClock,
        watch: OutageWatch,
        hours: float,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """No outage open: the wall clock set 5 h ahead (or back) is a clock.jump of the
        register and a WARNING."""
        caplog.set_level(logging.INFO)
        watch.tick()
        clock.advance(60)
        clock.jump(hours * HOUR)
        watch.tick()
        [(register_id, jump)] = _events(service, "clock.jump")
        assert register_id == "KASSE-1"
        assert float(str(jump["delta_seconds"])) == pytest.approx(hours * HOUR)
        assert len(_messages(caplog, logging.WARNING, "wall clock jumped")) == 1

    def test_forward_and_back_gives_two_jumps_and_small_drift_none(
        self, service: ReceiptService, clock: FrozenClock, watch: OutageWatch
    ) -> None:
        """5 h ahead, then back: two events; a 30-second correction is within tolerance."""
        watch.tick()
        for delta in (5 * HOUR, -5 * HOUR, 30.0):
            clock.advance(60)
            clock.jump(delta)
            watch.tick()
        deltas = [float(str(d["delta_seconds"])) for _, d in _events(service, "clock.jump")]
        assert deltas == pytest.approx([5 * HOUR, -5 * HOUR])

    def test_a_jump_during_an_outage_is_journaled_once(
        self, service: ReceiptService, clock: FrozenClock, watch: OutageWatch
    ) -> None:
        """An outage opened after the last tick and a clock set back: one event, not two."""
        watch.tick()
        with service.db.write_connection().transaction() as conn:
            service.outages.open(
                conn,
                register_id="KASSE-1",
                unit_id="dev",
                cause="test",
                number=None,
                at=clock.now(),
            )
        service.outages.settle(committed=True)
        clock.advance(60)
        clock.jump(-5 * HOUR)
        watch.tick()
        assert len(_events(service, "clock.jump")) == 1


class TestClampedDates:
    def test_receipts_dated_ahead_of_the_clock_are_logged_once(
        self,
        service: ReceiptService,
        clock: FrozenClock,
        watch: OutageWatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A receipt issued 5 h ahead, the clock set back: receipts keep the future date
        (that is the rule), and that is logged once with both dates, then once as caught up."""
        caplog.set_level(logging.INFO)
        watch.tick()
        clock.jump(5 * HOUR)
        ahead = service.issue(sale(request_id="a")).issued_at
        clock.jump(-5 * HOUR)
        for n in range(3):
            clock.advance(60)
            assert service.issue(sale(request_id=f"b-{n}")).issued_at == ahead
            watch.tick()
        [line] = _messages(caplog, logging.WARNING, "behind its last receipt date")
        assert ahead in line
        assert "2026-03-02T11:0" in line  # the clock, in the register's time zone
        clock.advance(5 * HOUR)
        watch.tick()
        watch.tick()
        assert len(_messages(caplog, logging.INFO, "has caught up")) == 1
        assert len(_messages(caplog, logging.WARNING, "behind its last receipt date")) == 1
