"""A FinanzOnline report is due at a moment, not on a day: ``overdue`` fires at that moment,
so wherever a person reads it (the log, ``outage list``) it is the date and time in the
register's time zone; the JSON keeps the UTC instant."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pytest
from conftest import REGISTER

from agent.clock import FrozenClock
from agent.outage_watch import OutageWatch, shown_due
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from factories import Run, box_words, expect, sale

HOUR = 3600.0
# 2 March 10:00 UTC + 48 h + 7 days; 11:00 in Vienna (CET)
REPORT_DUE = dt.datetime(2026, 3, 11, 10, tzinfo=dt.UTC)


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _past_the_window(
    service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock, watch: OutageWatch
) -> None:
    """An outage from 2 March 10:00 UTC, ticked hourly to its 48th hour."""
    flaky.mode = "down"
    service.issue(sale(request_id="r-1"))
    for _ in range(48):
        clock.advance(HOUR)
        watch.tick()


class TestShownDue:
    @pytest.mark.parametrize(
        ("due", "shown"),
        [
            ("2026-03-11T10:00:00+00:00", "2026-03-11 11:00 (Europe/Vienna)"),
            ("2026-03-31T23:30:00+00:00", "2026-04-01 01:30 (Europe/Vienna)"),  # CEST
            ("2026-03-11T10:00:59+00:00", "2026-03-11 11:00 (Europe/Vienna)"),
        ],
    )
    def test_the_moment_in_the_registers_zone(self, due: str, shown: str) -> None:
        """Local date and time with the zone's name; the seconds cut off (never later)."""
        assert shown_due(due, "Europe/Vienna") == shown


class TestTheLog:
    def test_exceeded_and_overdue_name_the_moment_overdue_fires(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        watch: OutageWatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """At 48 h the ERROR says "by 2026-03-11 11:00 (Europe/Vienna)"; a minute before
        that moment nothing is overdue, at it ``overdue`` fires and says the same."""
        caplog.set_level(logging.WARNING)
        _past_the_window(service, flaky, clock, watch)
        [exceeded] = _messages(caplog, "past the 48-hour window")
        assert "report it in FinanzOnline by 2026-03-11 11:00 (Europe/Vienna) " in exceeded
        clock.advance((REPORT_DUE - clock.now()).total_seconds() - 60)
        assert watch.tick() == []
        clock.advance(60)
        assert watch.tick() == [(1, "overdue")]
        [overdue] = _messages(caplog, "it is overdue")
        assert "was due by 2026-03-11 11:00 (Europe/Vienna) and" in overdue

    def test_the_end_report_names_its_moment(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        watch: OutageWatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The Sammelbeleg at 4 March 12:00 UTC closes it: its end is due a week later,
        13:00 in Vienna."""
        caplog.set_level(logging.WARNING)
        _past_the_window(service, flaky, clock, watch)
        clock.advance(2 * HOUR)
        flaky.mode = "up"
        assert [r.kind for r in service.recover(REGISTER) or []] == ["sammelbeleg"]
        [end] = _messages(caplog, "report its end")
        assert "in FinanzOnline by 2026-03-11 13:00 (Europe/Vienna) " in end


class TestOutageList:
    def test_the_list_shows_the_moment_and_the_json_the_instant(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        watch: OutageWatch,
        run: Run,
        data_dir: Path,
    ) -> None:
        """`outage list`: "due 2026-03-11 11:00 (Europe/Vienna)"; with --json
        `report_due_at` stays the UTC instant."""
        _past_the_window(service, flaky, clock, watch)
        listed = box_words(expect(run("outage", "list", "--data-dir", data_dir), 0).stdout)
        assert "due 2026-03-11 11:00 (Europe/Vienna)" in listed
        result = expect(run("outage", "list", "--json", "--data-dir", data_dir), 0)
        [outage] = json.loads(result.stdout)
        assert outage["report_due_at"] == "2026-03-11T10:00:00Z"
