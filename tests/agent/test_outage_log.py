"""Outages in the service log: one line when an outage opens, one when its Sammelbeleg
closes it and one per escalation of the 48-hour window, each said only once committed."""

from __future__ import annotations

import logging

import pytest

from agent.clock import FrozenClock
from agent.outage_watch import OutageWatch
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from factories import sale

HOUR = 3600.0


@pytest.fixture(name="logged")
def _logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name in ("agent.outages", "agent.outage_watch")
    ]


class TestOpenAndClose:
    def test_an_outage_is_logged_when_it_opens_and_when_its_sammelbeleg_closes_it(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        logged: pytest.LogCaptureFixture,
    ) -> None:
        """Open: register, unit, cause, first affected receipt (WARNING). Close: the
        Sammelbeleg, how long it lasted and how many receipts it affected (INFO)."""
        flaky.mode = "down"
        assert service.issue(sale(request_id="a")).signature_state == "fallback"
        assert service.issue(sale(request_id="b")).signature_state == "fallback"
        [(level, opened)] = _outage_lines(logged)
        assert level == logging.WARNING
        for part in ("outage 1", "register KASSE-1", "unit dev", "down", "receipt 2"):
            assert part in opened, opened
        clock.advance(2 * HOUR + 90)
        flaky.mode = "up"
        [sammelbeleg] = service.recover("KASSE-1") or []
        assert sammelbeleg.number == 4
        [_, (level, closed)] = _outage_lines(logged)
        assert level == logging.INFO
        for part in ("outage 1", "register KASSE-1", "Sammelbeleg 4", "2:01:30", "2 receipts"):
            assert part in closed, closed

    def test_an_opening_whose_transaction_rolls_back_is_not_logged(
        self, service: ReceiptService, flaky: FlakyUnit, logged: pytest.LogCaptureFixture
    ) -> None:
        """The receipt that met the failure is not stored (its transaction fails after the
        outage was opened in it): no outage, no line; the retry opens it and says so once."""
        conn = service.db.write_connection()._conn
        conn.execute(
            "CREATE TEMP TRIGGER refuse AFTER INSERT ON main.receipts"
            " BEGIN SELECT RAISE(ABORT, 'the disk failed'); END"
        )
        flaky.mode = "down"
        with pytest.raises(Exception, match="the disk failed"):
            service.issue(sale(request_id="a"))
        assert not service.outages.is_open("KASSE-1")
        assert _outage_lines(logged) == []
        conn.execute("DROP TRIGGER temp.refuse")
        assert service.issue(sale(request_id="a")).signature_state == "fallback"
        [(level, opened)] = _outage_lines(logged)
        assert level == logging.WARNING
        assert "receipt 2" in opened


class TestEscalations:
    def test_each_escalation_of_the_48_hour_window_is_logged_once(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        logged: pytest.LogCaptureFixture,
    ) -> None:
        """24 h and 44 h are warnings; 48 h (report due, with the date) and an overdue
        report are errors naming the command that records the report."""
        watch = OutageWatch(service.db.write_connection(), clock)
        flaky.mode = "down"
        service.issue(sale(request_id="a"))
        watch.tick()
        for hours in (25, 45, 49, 9 * 24):
            clock.advance(hours * HOUR - (clock.monotonic() - 1000.0))
            watch.tick()
            watch.tick()  # nothing new: no second line
        lines = _outage_lines(logged)[1:]  # after the opening
        assert [level for level, _ in lines] == [
            logging.WARNING,
            logging.WARNING,
            logging.ERROR,
            logging.ERROR,
        ]
        day, approaching, exceeded, overdue = (text for _, text in lines)
        assert "outage 1" in day
        assert "register KASSE-1" in day
        assert "25.0 h" in day
        assert "48-hour" in approaching
        assert "2026-03-11" in exceeded  # reached 2026-03-04, due a week later
        assert "till-agent outage report 1 --reference" in exceeded
        assert "overdue" in overdue
        assert "till-agent outage report 1 --reference" in overdue

    def test_closing_an_outage_past_48_hours_is_a_warning_asking_for_the_end_report(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        logged: pytest.LogCaptureFixture,
    ) -> None:
        """Its end must be reported in FinanzOnline too: the closing line (WARNING) is
        followed by the end report's line, with its due date (a week after the Sammelbeleg)
        and how to record it."""
        watch = OutageWatch(service.db.write_connection(), clock)
        flaky.mode = "down"
        service.issue(sale(request_id="a"))
        watch.tick()
        clock.advance(50 * HOUR)
        watch.tick()
        flaky.mode = "up"
        assert service.recover("KASSE-1")
        (level, closed), (end_level, end) = _outage_lines(logged)[-2:]
        assert level == logging.WARNING
        assert "Sammelbeleg 3 after 2 days, 2:00:00" in closed
        assert "it lasted past 48 h" in closed
        assert end_level == logging.WARNING
        assert "report its end (Wiederinbetriebnahme) in FinanzOnline by 2026-03-11" in end
        assert "till-agent outage report 1 --end --reference" in end
