"""The FinanzOnline reports an outage past 48 hours owes after it ended (rksv.md section 5,
DESIGN.md invariant 4): the report (a week after the 48 hours) and the report of its end
(a week after the Sammelbeleg), each reminded until its reference is recorded, also when
the outage is long over and the till is idle."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REGISTER

from agent.clock import FrozenClock
from agent.evidence import outage_evidence, render_evidence
from agent.outage_view import outage_out
from agent.outage_watch import OutageWatch, acknowledge_report
from agent.outages import OutageRecord, load_outages
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from factories import Run, box_words, expect, journal_events, sale
from storage import DB_FILE, TillDB, make_engine
from storage.migrate import downgrade_to

HOUR = 3600.0
UTC = dt.UTC
REPORT_DUE = dt.datetime(2026, 3, 11, 10, tzinfo=UTC)  # 48 h after 2 March 10:00, + 7 days
END_DUE = dt.datetime(2026, 3, 11, 12, tzinfo=UTC)  # its end, 4 March 12:00, + 7 days


def _outage(db: TillDB) -> OutageRecord:
    with db.read_connection() as conn:
        [outage] = load_outages(conn)
    return outage


def _levels(db: TillDB) -> list[str]:
    return [str(e["level"]) for e in journal_events(db, "outage.escalation")]


def _until(clock: FrozenClock, moment: dt.datetime) -> None:
    """Let the time pass (all clocks) up to ``moment``."""
    clock.advance((moment - clock.now()).total_seconds())


def _outage_of(
    service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock, watch: OutageWatch, hours: int
) -> None:
    """One fallback receipt at 2 March 10:00, the watch ticking hourly for ``hours``, then
    the unit signs again and recovery issues the Sammelbeleg that closes the outage."""
    flaky.mode = "down"
    assert service.issue(sale(request_id="r-1")).signature_state == "fallback"
    for _ in range(hours):
        clock.advance(HOUR)
        watch.tick()
    flaky.mode = "up"
    assert [r.kind for r in service.recover(REGISTER) or []] == ["sammelbeleg"]


@pytest.fixture(name="ended")
def _ended(
    service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock, watch: OutageWatch
) -> ReceiptService:
    """Outage 1 lasted 50 hours (2 March 10:00 to 4 March 12:00) and is closed."""
    _outage_of(service, flaky, clock, watch, 50)
    return service


class TestTheEndReport:
    def test_the_close_records_when_the_end_must_be_reported(self, ended: ReceiptService) -> None:
        """A week after the Sammelbeleg, journaled as `end-report` with both dates."""
        outage = _outage(ended.db)
        assert outage.ended_at == "2026-03-04T12:00:00+00:00"
        assert outage.report_due == REPORT_DUE.isoformat()
        assert outage.end_report_due == END_DUE.isoformat()
        assert outage.escalations[-1] == "end-report"
        end = journal_events(ended.db, "outage.escalation")[-1]
        assert end == {
            "outage": 1,
            "level": "end-report",
            "age_hours": 50.0,
            "report_due": REPORT_DUE.isoformat(),
            "end_report_due": END_DUE.isoformat(),
        }

    def test_an_outage_within_48_hours_owes_no_report(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        watch: OutageWatch,
    ) -> None:
        """47 hours: a temporary outage; nothing is due and nothing is reminded later."""
        _outage_of(service, flaky, clock, watch, 47)
        outage = _outage(service.db)
        assert (outage.report_due, outage.end_report_due) == (None, None)
        _until(clock, END_DUE + dt.timedelta(days=30))
        assert watch.tick() == []
        assert "end-report" not in _levels(service.db)


class TestRemindersAfterTheEnd:
    def test_both_reports_become_overdue_once_each_while_the_till_is_idle(
        self,
        ended: ReceiptService,
        clock: FrozenClock,
        watch: OutageWatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """No sale after the Sammelbeleg: the watch says `overdue` when the report's week is
        over and `end-overdue` when the end report's is (ERROR, each naming how to record
        it), each once however many ticks."""
        caplog.set_level(logging.INFO, logger="agent.outage_watch")
        second = dt.timedelta(seconds=1)
        for moment, fired in [
            (REPORT_DUE - second, []),
            (REPORT_DUE, ["overdue"]),
            (END_DUE - second, []),
            (END_DUE, ["end-overdue"]),
            (END_DUE + dt.timedelta(days=10), []),
        ]:
            _until(clock, moment)
            assert watch.tick() == [(1, level) for level in fired], moment
            assert watch.tick() == []
        assert _levels(ended.db)[-3:] == ["end-report", "overdue", "end-overdue"]
        overdue, end_overdue = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert overdue[0] == end_overdue[0] == logging.ERROR
        assert "report was due by 2026-03-11" in overdue[1]
        assert "till-agent outage report 1 --reference" in overdue[1]
        assert "report of its end was due by 2026-03-11" in end_overdue[1]
        assert "till-agent outage report 1 --end --reference" in end_overdue[1]

    def test_a_tick_with_nothing_due_writes_nothing(
        self, ended: ReceiptService, clock: FrozenClock, watch: OutageWatch
    ) -> None:
        """The ended outage is looked at on every tick while a report is due, but only a
        reminder falling due changes a row; a restarted watch sends nothing twice."""
        writer = ended.db.write_connection()._conn

        def stored() -> tuple[int, int, OutageRecord]:
            return writer.total_changes, len(_levels(ended.db)), _outage(ended.db)

        before = stored()
        for hours in (1, 24, 5 * 24):  # until 10 March 13:00
            clock.advance(hours * HOUR)
            assert watch.tick() == []
            assert stored() == before
        _until(clock, END_DUE)
        assert [level for _, level in watch.tick()] == ["overdue", "end-overdue"]
        after = stored()
        clock.advance(HOUR)
        assert watch.tick() == []
        assert OutageWatch(ended.db.write_connection(), clock).tick() == []  # a restart
        assert stored() == after

    def test_a_recorded_report_is_not_reminded_of(
        self, ended: ReceiptService, clock: FrozenClock, watch: OutageWatch
    ) -> None:
        """The report recorded: only its end report becomes overdue. The end report
        recorded too: the outage owes nothing, and no tick says anything about it again."""
        writer = ended.db.write_connection()
        acknowledge_report(writer, clock, 1, "FON-1")
        _until(clock, END_DUE)
        assert watch.tick() == [(1, "end-overdue")]
        acknowledge_report(writer, clock, 1, "FON-2", end=True)
        _until(clock, END_DUE + dt.timedelta(days=30))
        assert watch.tick() == []
        assert "overdue" not in _levels(ended.db)

    def test_the_end_report_recorded_in_time_stops_its_reminder(
        self, ended: ReceiptService, clock: FrozenClock, watch: OutageWatch
    ) -> None:
        writer = ended.db.write_connection()
        acknowledge_report(writer, clock, 1, "FON-1")
        acknowledge_report(writer, clock, 1, "FON-2", end=True)
        _until(clock, END_DUE + dt.timedelta(days=1))
        assert watch.tick() == []
        outage = _outage(ended.db)
        assert (outage.report_reference, outage.end_report_reference) == ("FON-1", "FON-2")


class TestViews:
    def test_the_end_reports_date_is_shown(self, ended: ReceiptService) -> None:
        """`GET /v1/outages` and the command line's JSON (`end_report_due_at`, UTC) and the
        evidence pack's text."""
        shown = outage_out(_outage(ended.db)).model_dump(mode="json")
        assert shown["end_report_due_at"] == "2026-03-11T12:00:00Z"
        with ended.db.read_connection() as conn:
            text = render_evidence(outage_evidence(conn, 1))
        assert "Endemeldung fällig bis:  2026-03-11T12:00:00Z\n" in text
        assert "Meldung fällig bis:      2026-03-11T10:00:00Z\n" in text

    def test_outage_list_shows_both_reports(
        self, ended: ReceiptService, clock: FrozenClock, run: Run, data_dir: Path
    ) -> None:
        """`outage list`: the moment each report is due (the register's time zone) until its
        reference is recorded, then the reference."""

        def listed() -> str:
            return box_words(expect(run("outage", "list", "--data-dir", data_dir), 0).stdout)

        due, end_due = "2026-03-11 11:00 (Europe/Vienna)", "2026-03-11 13:00 (Europe/Vienna)"
        assert f"due {due} due {end_due}" in listed()
        acknowledge_report(ended.db.write_connection(), clock, 1, "FON-1")
        assert f"FON-1 due {end_due}" in listed()
        acknowledge_report(ended.db.write_connection(), clock, 1, "FON-2", end=True)
        assert "FON-1 FON-2" in listed()


class TestUpgrade:
    def test_an_outage_that_ended_before_the_upgrade_gets_its_end_report(
        self,
        ended: ReceiptService,
        clock: FrozenClock,
        open_db: Callable[..., TillDB],
        data_dir: Path,
    ) -> None:
        """Closed by an earlier version (no `end_report_due`, no `end-report` level): the
        migration dates its end report a week after its end, and the watch reminds of it."""
        ended.db.close()
        engine = make_engine(data_dir / DB_FILE)
        downgrade_to(engine, "0006")
        with engine.begin() as conn:  # as the earlier version closed it
            conn.exec_driver_sql(
                "UPDATE outages SET escalations = ?",
                (json.dumps(["opened", "24h", "approaching", "exceeded"]),),
            )
        engine.dispose()
        db = open_db(data_dir)
        assert _outage(db).end_report_due == END_DUE.isoformat()
        _until(clock, END_DUE + dt.timedelta(days=1))
        watch = OutageWatch(db.write_connection(), clock)
        assert [level for _, level in watch.tick()] == ["overdue", "end-report", "end-overdue"]
        assert watch.tick() == []
